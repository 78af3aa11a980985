"""The tiny base model: a locally trained T5 tokenizer and a directory stock diffusers loads and samples from."""

from __future__ import annotations

import json
import string

import pytest
import sentencepiece
import torch
from diffusers import CogVideoXPipeline
from safetensors.torch import load_file
from transformers import AutoTokenizer, T5Tokenizer

from thematrix.base_model import build_base_model, build_components, main
from thematrix.controls import game_files, read_json_object, vocabulary_from_json
from thematrix.presets import PRESETS
from thematrix.tokenizer import EOS_ID, PAD_ID, SENTENCEPIECE_FILE, UNK_ID, build_tokenizer

CAPTIONS = [
    "A red car drives along a grey track between green fields.",
    "The camera looks down on the car as it brakes before a sharp left turn.",
    "Rain falls on the circuit at night; lap 3/10, speed 120 km/h!",
]
# Every game's control phrases, which the tokenizer is trained on.
PHRASES = [
    phrase
    for path in game_files()
    for phrase in vocabulary_from_json(read_json_object(path, "game"), str(path)).phrases
]
TEXTS = PHRASES + CAPTIONS
HEIGHT, WIDTH, NUM_FRAMES = 48, 64, 9
INFERENCE_STEPS = 2
WEIGHT_FILES = {
    "text_encoder": "model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "transformer": "diffusion_pytorch_model.safetensors",
}


@pytest.fixture(scope="module")
def sentencepiece_model(tiny_model_dir):
    return sentencepiece.SentencePieceProcessor(model_file=str(tiny_model_dir / "tokenizer" / SENTENCEPIECE_FILE))


@pytest.mark.parametrize("loader", [T5Tokenizer, AutoTokenizer])
def test_tokenizer_encodes_like_sentencepiece_without_unknown(tiny_model_dir, sentencepiece_model, loader):
    tokenizer = loader.from_pretrained(tiny_model_dir / "tokenizer")
    assert isinstance(tokenizer, T5Tokenizer)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id) == (
        PAD_ID,
        EOS_ID,
        UNK_ID,
        None,
    )
    for text in TEXTS:
        pieces = tokenizer.tokenize(text)
        ids = tokenizer(text).input_ids
        assert pieces == sentencepiece_model.encode(text, out_type=str)
        assert ids == sentencepiece_model.encode(text) + [EOS_ID]
        assert UNK_ID not in ids
        # Real subword pieces, not one piece per character or byte.
        assert len(pieces) < len(text) / 2
        assert not any(piece.startswith("<0x") for piece in pieces)
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_presets_tokenizer_encodes_its_training_text_as_sentencepiece_does(preset, tmp_path):
    """build_tokenizer checks the saved tokenizer against SentencePiece on its whole training text (the corpus, every
    game's phrases, numbers), raising TokenizerMismatchError on a difference: at the 2B preset's vocabulary size too,
    where the corpus yields every piece it holds."""
    settings = PRESETS[preset]["tokenizer"]
    tokenizer = build_tokenizer(settings["vocab_size"], settings["model_max_length"], tmp_path)
    pieces = tokenizer.tokenize("lap 3/10 at 1000 km/h")
    assert [piece for piece in pieces if any(character.isdigit() for character in piece)] == list("3101000")


def test_every_printable_ascii_character_has_a_piece(tiny_model_dir, sentencepiece_model):
    text = " ".join([string.ascii_letters, string.digits, string.punctuation, *string.punctuation])
    ids = T5Tokenizer.from_pretrained(tiny_model_dir / "tokenizer")(text).input_ids
    assert UNK_ID not in ids
    assert ids == sentencepiece_model.encode(text) + [EOS_ID]


def test_sentencepiece_falls_back_to_bytes(sentencepiece_model):
    ids = sentencepiece_model.encode("\U0001f697 on the track")
    assert UNK_ID not in ids
    assert "<0xF0>" in sentencepiece_model.id_to_piece(ids)


def test_text_encoder_has_one_embedding_per_token(tiny_model_dir):
    tokenizer = T5Tokenizer.from_pretrained(tiny_model_dir / "tokenizer")
    config = json.loads((tiny_model_dir / "text_encoder" / "config.json").read_text())
    assert config["vocab_size"] == len(tokenizer)
    assert (
        tokenizer.model_max_length
        == json.loads((tiny_model_dir / "transformer" / "config.json").read_text())["max_text_seq_length"]
    )


def test_stock_pipeline_loads_and_generates(tiny_model_dir):
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "CogVideoXPipeline"
    assert index["tokenizer"] == ["transformers", "T5Tokenizer"]
    pipeline = CogVideoXPipeline.from_pretrained(tiny_model_dir)
    frames = pipeline(
        CAPTIONS[0],
        height=HEIGHT,
        width=WIDTH,
        num_frames=NUM_FRAMES,
        num_inference_steps=INFERENCE_STEPS,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).frames
    assert frames.shape == (1, NUM_FRAMES, 3, HEIGHT, WIDTH)
    assert torch.isfinite(frames).all()
    assert frames.std() > 0.01


def test_random_transformer_output_is_not_trivial(tiny_model_dir):
    pipeline = CogVideoXPipeline.from_pretrained(tiny_model_dir)
    transformer = pipeline.transformer
    config = transformer.config
    latent_frames = (NUM_FRAMES - 1) // config.temporal_compression_ratio + 1
    latents = torch.randn(1, latent_frames, config.in_channels, config.sample_height, config.sample_width)
    text = torch.randn(1, config.max_text_seq_length, config.text_embed_dim)
    with torch.no_grad():
        output = transformer(latents, text, torch.tensor([500])).sample
    assert output.shape == latents.shape
    assert output.std() > 0.1


def test_same_seed_rebuilds_identical_weights_over_an_existing_dir(tiny_model_dir, tmp_path):
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    (rebuilt / "stale.txt").write_text("left from an earlier build")
    build_base_model("tiny", rebuilt, seed=0, overwrite=True)
    assert not (rebuilt / "stale.txt").exists()
    for component, weight_file in WEIGHT_FILES.items():
        original = load_file(tiny_model_dir / component / weight_file)
        again = load_file(rebuilt / component / weight_file)
        assert original.keys() == again.keys()
        assert all(torch.equal(original[key], again[key]) for key in original)
    spm_file = f"tokenizer/{SENTENCEPIECE_FILE}"
    assert (tiny_model_dir / spm_file).read_bytes() == (rebuilt / spm_file).read_bytes()
    assert not [path.name for path in tmp_path.iterdir() if path.name != "rebuilt"]


def test_another_seed_gives_other_weights(tiny_model_dir):
    transformer = build_components("tiny", seed=1)["transformer"]
    original = load_file(tiny_model_dir / "transformer" / WEIGHT_FILES["transformer"])
    assert not torch.equal(original["proj_out.weight"], transformer.state_dict()["proj_out.weight"])


def test_refuses_to_overwrite_a_non_empty_dir(tmp_path):
    existing = tmp_path / "model"
    existing.mkdir()
    (existing / "keep.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="overwrite"):
        build_base_model("tiny", existing)
    with pytest.raises(SystemExit, match="--overwrite"):
        main(["--preset", "tiny", "--output_dir", str(existing)])
    assert [path.name for path in existing.iterdir()] == ["keep.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["model"]


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="cogvideox-2b"):
        build_components("small")
