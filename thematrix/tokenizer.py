"""A T5 tokenizer trained here with SentencePiece, so a base model needs nothing from a model hub.

The SentencePiece model follows T5's conventions (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, no BOS,
100 ``<extra_id_*>`` sentinels appended by transformers) and is saved as a normal transformers
``T5Tokenizer`` directory, the class stock ``CogVideoXPipeline`` loads.

Pitfalls of transformers 5 that decide how this module is written:

- ``T5Tokenizer(vocab_file="spiece.model")`` silently ignores the file: the class is backed by the
  *tokenizers* library and its constructor builds a placeholder vocabulary (pad, eos, unk, "▁" and
  the sentinels, 104 ids), so every word encodes to ``<unk>``. Only ``from_pretrained`` on a
  directory holding ``spiece.model`` converts the SentencePiece model, so we write the model into
  the directory first and load it from there.
- Every load of a ``T5Tokenizer`` (from ``spiece.model`` or ``tokenizer.json``) rebuilds its Unigram
  model with ``byte_fallback=False``: a character without a piece of its own becomes ``<unk>``
  there, while SentencePiece falls back to byte pieces. So training uses ``character_coverage=1.0``
  on text that holds every printable ASCII character and common typographic ones: each gets its own
  piece and both libraries encode such text to the same ids. Other characters (an emoji) are byte
  pieces in SentencePiece and ``<unk>`` in transformers, as in the real T5 tokenizer, which has no
  byte fallback at all.
- The tokenizers backend treats byte pieces as ordinary vocabulary entries, so the literal text
  ``"<0x41>"`` is one piece there and six in SentencePiece; captions do not contain such text.
- ``save_pretrained`` writes only ``tokenizer.json``; ``spiece.model`` stays in the directory because
  transformers 4's sentencepiece-backed ``T5Tokenizer`` needs it.

``write_tokenizer`` therefore checks the saved directory, loaded through ``T5Tokenizer`` and through
``AutoTokenizer``, against SentencePiece itself on the whole training text before returning.
"""

from __future__ import annotations

import io
import logging
import string
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece
from transformers import AutoTokenizer, T5Tokenizer

from thematrix.controls import game_files, read_json_object, vocabulary_from_json

logger = logging.getLogger(__name__)

CORPUS_FILE = Path(__file__).parent / "assets" / "tokenizer_corpus.txt"
SENTENCEPIECE_FILE = "spiece.model"  # the file name T5Tokenizer looks for

# T5's special ids; -1 disables BOS.
PAD_ID, EOS_ID, UNK_ID, BOS_ID = 0, 1, 2, -1
FULL_CHARACTER_COVERAGE = 1.0
# One thread: SentencePiece's EM sums per-thread statistics, so a fixed single thread keeps the model
# bytes identical from run to run.
TRAINING_THREADS = 1
TRAINING_SEED = 0
QUIET_LOG_LEVEL = 2  # SentencePiece's C++ log: warnings and errors only
# Digits as pieces of one digit each. With pieces of several ("00"), a number can split into pieces of equal score
# two ways ("0" "00" or "00" "0"), and transformers' Unigram breaks that tie unlike SentencePiece: at the 2B
# preset's vocabulary size (every piece the corpus holds) the tokenizers then disagreed (transformers 5.24).
SPLIT_DIGITS = True

# Characters that must have a piece of their own, so transformers never maps them to <unk> (see above).
COVERAGE_CHARACTERS = (
    string.ascii_letters
    + string.digits
    + string.punctuation
    + "\u2018\u2019\u201c\u201d\u2013\u2014\u2026\u00b0\u00e9\u00e8\u00ea\u00e0\u00e2\u00e4\u00e7"
    "\u00ee\u00ef\u00f4\u00f6\u00f9\u00fb\u00fc\u00f1\u00df\u00c9\u00c0\u00c7"
)


class TokenizerMismatchError(RuntimeError):
    """A saved tokenizer that encodes text differently from the SentencePiece model it was made from."""


def corpus_lines(extra_lines: Iterable[str] = ()) -> list[str]:
    """The training text: the package's corpus, the control phrases of every game file (data/games), the coverage
    characters, ``extra_lines``."""
    lines = [line.strip() for line in CORPUS_FILE.read_text(encoding="utf-8").splitlines()]
    for path in game_files():
        lines += vocabulary_from_json(read_json_object(path, "game file"), str(path)).phrases
    lines.append(" ".join(COVERAGE_CHARACTERS))
    lines += list(extra_lines)
    return [line for line in lines if line]


def train_sentencepiece(vocab_size: int, lines: Sequence[str]) -> bytes:
    """Serialized unigram SentencePiece model with T5's special ids and byte fallback.

    ``vocab_size`` is an upper bound: a corpus of a few hundred lines holds 1,300 to 1,500 pieces
    (depending on the SentencePiece version), so a request for T5's 32,000 yields what the corpus
    supports instead of failing. The same lines and SentencePiece version give the same bytes.
    """
    model = io.BytesIO()
    sentencepiece.set_random_generator_seed(TRAINING_SEED)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=FULL_CHARACTER_COVERAGE,
        byte_fallback=True,
        split_digits=SPLIT_DIGITS,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        num_threads=TRAINING_THREADS,
        minloglevel=QUIET_LOG_LEVEL,
    )
    pieces = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    if pieces < vocab_size:
        logger.info("the tokenizer corpus supports %d of the %d pieces asked for", pieces, vocab_size)
    return model.getvalue()


def check_tokenizer(directory: str | Path, texts: Iterable[str]) -> None:
    """Raise unless ``directory`` encodes ``texts`` exactly as its ``spiece.model`` does, without ``<unk>``."""
    directory = Path(directory)
    reference = sentencepiece.SentencePieceProcessor(model_file=str(directory / SENTENCEPIECE_FILE))
    for loader in (T5Tokenizer, AutoTokenizer):
        tokenizer = loader.from_pretrained(directory)
        for text in texts:
            expected = reference.encode(text) + [EOS_ID]
            ids = tokenizer(text).input_ids
            if ids != expected or UNK_ID in ids:
                raise TokenizerMismatchError(
                    f"{directory}: {loader.__name__}.from_pretrained encodes {text!r} as "
                    f"{tokenizer.convert_ids_to_tokens(ids)}, but {SENTENCEPIECE_FILE} gives "
                    f"{reference.id_to_piece(expected)}. The installed transformers converts SentencePiece "
                    "models differently; see thematrix/tokenizer.py for the conversion this relies on."
                )


def write_tokenizer(
    model_proto: bytes, directory: str | Path, model_max_length: int, check_texts: Iterable[str] = ()
) -> T5Tokenizer:
    """Save ``model_proto`` as a T5Tokenizer directory, check it against ``check_texts``, return it loaded."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SENTENCEPIECE_FILE).write_bytes(model_proto)
    T5Tokenizer.from_pretrained(directory, model_max_length=model_max_length).save_pretrained(directory)
    check_tokenizer(directory, check_texts)
    return T5Tokenizer.from_pretrained(directory)


def build_tokenizer(vocab_size: int, model_max_length: int, directory: str | Path | None = None) -> T5Tokenizer:
    """Train on the package corpus and save to ``directory`` (a temporary one when None)."""
    lines = corpus_lines()
    model_proto = train_sentencepiece(vocab_size, lines)
    if directory is not None:
        return write_tokenizer(model_proto, directory, model_max_length, check_texts=lines)
    with tempfile.TemporaryDirectory() as temporary:
        return write_tokenizer(model_proto, temporary, model_max_length, check_texts=lines)
