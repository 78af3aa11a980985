"""Control vocabularies: the player's keys as tokens, each with a phrase a text encoder can embed.

A game's footage carries one control token per video frame (``"W,W,JUMP,..."``). The model is
conditioned on one token per *latent* frame: the token of every ``temporal_compression``-th
sampled frame, matching the VAE's compression of time.

A game's vocabulary travels with its footage as ``vocabulary.json`` in the data root::

    {"tokens": {"W": "The player walks forward.", "S": "The player walks backward.", ...},
     "null_phrase": ""}

``tokens`` maps each token to its phrase, in id order (token ids are positions in this object);
``null_phrase`` (optional, default empty) is the phrase of the null control that guidance drops to.
"""

from __future__ import annotations

import difflib
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONTROL_SEPARATOR = ","
# Latent frames each token is held in the default control pattern (validation, inference without controls).
DEFAULT_HOLD_LATENT_FRAMES = 2
# The vocabulary of a game's footage, in its data root (format: the module docstring).
VOCABULARY_FILE = "vocabulary.json"
TOKENS_KEY = "tokens"
NULL_PHRASE_KEY = "null_phrase"
VOCABULARY_KEYS = (TOKENS_KEY, NULL_PHRASE_KEY)
# Game files (data/README.md): a game's vocabulary plus what its recorder needs and, optionally, the key map that
# play gives a model of that game (under GAME_KEYMAP_KEY).
GAMES_DIR = Path(__file__).resolve().parents[1] / "data" / "games"
GAME_KEYMAP_KEY = "keys"


class ControlError(ValueError):
    """A control string, token or vocabulary that cannot be used; the message says where and how to fix it."""


@dataclass(frozen=True)
class ControlVocabulary:
    """Ordered control tokens and their phrases; id ``len(tokens)`` is the null (dropped) control.

    ``source`` says where the vocabulary came from (a file, a model, a setting), for error messages;
    it takes no part in equality.
    """

    tokens: tuple[str, ...]
    phrases: tuple[str, ...]
    null_phrase: str = ""
    source: str = field(default="", compare=False)

    def __post_init__(self):
        where = f"{self.source}: " if self.source else ""
        if not self.tokens:
            raise ControlError(f"{where}a control vocabulary needs at least one token")
        if len(self.tokens) != len(self.phrases):
            raise ControlError(f"{where}{len(self.tokens)} control tokens but {len(self.phrases)} phrases")
        if len(set(self.tokens)) != len(self.tokens):
            raise ControlError(f"{where}control tokens repeat: {list(self.tokens)}")
        for token in self.tokens:
            if not token or CONTROL_SEPARATOR in token or token != token.strip():
                raise ControlError(
                    f"{where}control token {token!r} must be non-empty, without spaces at its ends and without "
                    f"{CONTROL_SEPARATOR!r}"
                )
        for token, phrase in zip(self.tokens, self.phrases):
            if not phrase.strip():
                raise ControlError(f"{where}the phrase of control token {token!r} is empty; describe what the key does")
        # Equal phrases embed to equal vectors: the model could not tell those controls apart.
        repeated = sorted(phrase for phrase, count in Counter((*self.phrases, self.null_phrase)).items() if count > 1)
        if repeated:
            raise ControlError(
                f"{where}the phrases {repeated} belong to several tokens (or to a token and the null control); "
                "give every token its own phrase"
            )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str], null_phrase: str = "", source: str = "") -> ControlVocabulary:
        return cls(tuple(mapping), tuple(mapping.values()), null_phrase, source)

    def to_mapping(self) -> dict[str, str]:
        return dict(zip(self.tokens, self.phrases))

    def to_json(self) -> dict[str, Any]:
        """The ``vocabulary.json`` content of this vocabulary."""
        return {TOKENS_KEY: self.to_mapping(), NULL_PHRASE_KEY: self.null_phrase}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @property
    def null_id(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def token_id(self, token: str) -> int:
        try:
            return self.tokens.index(token)
        except ValueError:
            close = difflib.get_close_matches(token, self.tokens, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            origin = f" (from {self.source})" if self.source else ""
            raise ControlError(
                f"unknown control token {token!r}; the vocabulary{origin} has {list(self.tokens)}.{hint}"
            ) from None

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.token_id(token) for token in tokens]

    def parse(self, control_string: str) -> list[str]:
        """Split ``"W, W,JUMP"`` into tokens, checking each against the vocabulary."""
        tokens = split_controls(control_string)
        if any(not token for token in tokens):
            raise ControlError(f"empty control token in {control_string!r}; separate tokens with single commas")
        self.encode(tokens)
        return tokens


def split_controls(control_string: str) -> list[str]:
    """The tokens of a comma-separated control string, stripped (an empty one marks a stray comma)."""
    return [token.strip() for token in control_string.split(CONTROL_SEPARATOR)]


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    repeated = sorted(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
    if repeated:
        raise ControlError(f"keys {repeated} appear more than once in one object; each token needs one entry")
    return dict(pairs)


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file whose top level is an object, with repeated keys refused; errors name the file."""
    if not path.is_file():
        raise ControlError(f"{path}: {what} not found. Fix: pass the path of an existing {what}")
    try:
        content = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_refuse_duplicate_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ControlError(f"{path}: not valid JSON ({error}). Fix: write the {what} as a JSON object") from None
    except ControlError as error:
        raise ControlError(f"{path}: {error}") from None
    if not isinstance(content, dict):
        raise ControlError(f"{path}: the {what} is a JSON {type(content).__name__}, not an object. Fix: write {{...}}")
    return content


def refuse_unknown_keys(path: Path, content: Mapping[str, Any], known: Sequence[str]) -> None:
    """A misspelt key must not be silently ignored."""
    for key in content:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the keys are {list(known)}"
            raise ControlError(f"{path}: {key!r} is not a key of this file. Fix: remove it; {hint}")


def vocabulary_from_json(content: Mapping[str, Any], source: str) -> ControlVocabulary:
    """The vocabulary in a parsed ``vocabulary.json`` (or a game file, which holds the same keys)."""
    example = f'"{TOKENS_KEY}": {{"W": "The player walks forward.", ...}}'
    tokens = content.get(TOKENS_KEY)
    if not isinstance(tokens, dict) or not tokens:
        found = "is missing" if tokens is None else f"is {json.dumps(tokens)}"
        raise ControlError(
            f"{source}: {TOKENS_KEY!r} {found}. Fix: map each token to its phrase, in id order: {example}"
        )
    for token, phrase in tokens.items():
        if not isinstance(phrase, str):
            raise ControlError(
                f"{source}: {TOKENS_KEY}.{token}: the phrase is {json.dumps(phrase)}. Fix: write a sentence "
                'saying what the key does, e.g. "The player walks forward."'
            )
    null_phrase = content.get(NULL_PHRASE_KEY, "")
    if not isinstance(null_phrase, str):
        raise ControlError(
            f'{source}: {NULL_PHRASE_KEY!r} is {json.dumps(null_phrase)}. Fix: write a string ("" for the empty phrase)'
        )
    try:
        return ControlVocabulary.from_mapping(tokens, null_phrase, source)
    except ControlError as error:
        raise ControlError(f"{error}. Fix: edit {TOKENS_KEY!r}") from None


def load_vocabulary(path: str | os.PathLike) -> ControlVocabulary:
    """Read a ``vocabulary.json`` (format: the module docstring); every mistake names the file, the key and the fix."""
    path = Path(path)
    content = read_json_object(path, "vocabulary file")
    refuse_unknown_keys(path, content, VOCABULARY_KEYS)
    return vocabulary_from_json(content, str(path))


def data_root_vocabulary(data_root: str | os.PathLike) -> ControlVocabulary | None:
    """The vocabulary of the footage in ``data_root`` (its ``vocabulary.json``), or None if it has none."""
    path = Path(data_root) / VOCABULARY_FILE
    return load_vocabulary(path) if path.exists() else None


def agreed_vocabulary(*vocabularies: ControlVocabulary | None) -> ControlVocabulary | None:
    """The first of ``vocabularies`` that is given (not None), once every other given one has its tokens and
    phrases; a disagreement is an error naming both sources and both vocabularies. None if none is given."""
    given = [vocabulary for vocabulary in vocabularies if vocabulary is not None]
    for other in given[1:]:
        if (other.tokens, other.phrases) != (given[0].tokens, given[0].phrases):
            raise ControlError(
                f"{given[0].source} has the controls {given[0].to_mapping()}, but {other.source} has "
                f"{other.to_mapping()}. Fix: make them the same vocabulary, or leave out the one that is wrong"
            )
    return given[0] if given else None


def default_control_pattern(vocabulary: ControlVocabulary) -> list[str]:
    """Every token of ``vocabulary`` in turn, each held ``DEFAULT_HOLD_LATENT_FRAMES`` latent frames: the controls a
    validation or a generation without given controls cycles through, so that every key is shown."""
    return [token for token in vocabulary.tokens for _ in range(DEFAULT_HOLD_LATENT_FRAMES)]


def game_files() -> list[Path]:
    """The game files of this checkout (none where the package is installed without its data folder)."""
    return sorted(GAMES_DIR.glob("*.json"))


def latent_frame_controls(frame_tokens: Sequence[str], temporal_compression: int) -> list[str]:
    """One token per latent frame: the tokens of sampled frames ``0, c, 2c, ...`` of a ``c*k+1`` clip."""
    if (len(frame_tokens) - 1) % temporal_compression:
        raise ControlError(
            f"{len(frame_tokens)} per-frame controls do not form a clip of {temporal_compression}k+1 frames"
        )
    return list(frame_tokens[::temporal_compression])


def video_frame_labels(latent_tokens: Sequence[str], temporal_compression: int) -> list[str]:
    """The control active in each video frame: video frame 0 shows latent frame 0, then each latent frame covers
    ``temporal_compression`` video frames (``1 + c * (F - 1)`` frames in all)."""
    return [
        latent_tokens[(frame + temporal_compression - 1) // temporal_compression]
        for frame in range(1 + temporal_compression * (len(latent_tokens) - 1))
    ]


def cycle_controls(tokens: Sequence[str], count: int) -> list[str]:
    """``count`` tokens repeating ``tokens``: a short pattern drives a clip of any length."""
    return [tokens[index % len(tokens)] for index in range(count)]
