"""Build a random-weight CogVideoX base model from a preset, as a complete diffusers model directory.

Stage 1 reads a diffusers CogVideoX directory. The real CogVideoX-2B weights cannot be downloaded
here, so this writes one with the same layout: ``tiny`` for CPU tests and the demo, ``mini`` for the
pretraining that stands in for the real weights (thematrix/pretrain/), ``cogvideox-2b`` for GPU
benchmarks at full size. All go through the same code; the tokenizer is trained locally.

    python -m thematrix.base_model --preset tiny --output_dir outputs/base-tiny
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
)
from transformers import T5Config, T5EncoderModel

from thematrix.presets import PRESETS
from thematrix.tokenizer import build_tokenizer

logger = logging.getLogger(__name__)

# T5 pads its embedding table to a multiple of 128 rows: 32,000 pieces + 100 sentinels -> 32,128.
T5_EMBEDDING_MULTIPLE = 128
T5_EXTRA_IDS = 100
# Each network draws its weights from its own seed, so resizing one leaves the others' weights unchanged.
SEED_OFFSETS = {"text_encoder": 0, "vae": 1, "transformer": 2}
BUILD_DTYPE = torch.float32  # networks are initialised in float32, then cast
REPLACED_NAME = "replaced"  # where a replaced model directory waits to be deleted
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def text_encoder_vocab_size(preset_config: dict, num_token_ids: int) -> int:
    """Rows of the text encoder's embedding table for a tokenizer of ``num_token_ids`` ids.

    A preset whose table is T5's padded table for its tokenizer size (CogVideoX-2B: 32,128) keeps it,
    so random-weight benchmarks have the real model's shapes. Otherwise (the tiny preset inherits the
    2B table size) the table has exactly one row per tokenizer id.
    """
    rows = preset_config["text_encoder"]["vocab_size"]
    published_ids = preset_config["tokenizer"]["vocab_size"] + T5_EXTRA_IDS
    padded = math.ceil(published_ids / T5_EMBEDDING_MULTIPLE) * T5_EMBEDDING_MULTIPLE
    return rows if rows == padded and rows >= num_token_ids else num_token_ids


def preset_config(preset: str) -> dict:
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; thematrix/presets.py defines {sorted(PRESETS)}") from None


def build_components(
    preset: str, seed: int = 0, *, device: str | torch.device = "cpu", tokenizer_dir: str | Path | None = None
) -> dict:
    """Tokenizer, text encoder, VAE, transformer and scheduler of ``preset``, the networks randomly initialised.

    ``tokenizer_dir`` receives the tokenizer's files (``spiece.model`` among them); a temporary
    directory when None. ``BUILD_DTYPE`` weights on ``device``; the same ``seed`` gives the same weights.
    """
    config = preset_config(preset)
    tokenizer = build_tokenizer(
        config["tokenizer"]["vocab_size"], config["tokenizer"]["model_max_length"], directory=tokenizer_dir
    )
    text_encoder_config = T5Config(
        **dict(config["text_encoder"], vocab_size=text_encoder_vocab_size(config, len(tokenizer)))
    )
    constructors = {
        "text_encoder": lambda: T5EncoderModel(text_encoder_config),
        "vae": lambda: AutoencoderKLCogVideoX(**config["vae"]),
        "transformer": lambda: CogVideoXTransformer3DModel(**config["transformer"]),
    }
    components = {"tokenizer": tokenizer, "scheduler": CogVideoXDDIMScheduler(**config["scheduler"])}
    with torch.device(device):
        for name, construct in constructors.items():
            torch.manual_seed(seed + SEED_OFFSETS[name])
            components[name] = construct().eval()
    return components


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"--output_dir {output_dir} is a file; pass a directory path")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--output_dir {output_dir} is not empty; choose another directory or pass --overwrite "
            "(overwrite=True) to replace it"
        )


def build_base_model(
    preset: str,
    output_dir: str | Path,
    seed: int = 0,
    dtype: torch.dtype = BUILD_DTYPE,
    *,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
) -> Path:
    """Write a complete diffusers CogVideoX directory of ``preset`` with random weights; return its path.

    The model is written to a temporary sibling directory and renamed into place, so ``output_dir``
    never holds a partial model. An existing non-empty ``output_dir`` is replaced only with ``overwrite``.
    """
    output_dir = Path(output_dir)
    _check_output_dir(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # mkdtemp's private (0700) directory only holds the work; the model directory inside it gets the
    # umask's permissions like any other directory.
    workspace = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".partial", dir=output_dir.parent))
    try:
        staging = workspace / output_dir.name
        staging.mkdir()
        components = build_components(preset, seed, device=device, tokenizer_dir=staging / "tokenizer")
        if dtype != BUILD_DTYPE:
            for name in SEED_OFFSETS:
                components[name].to(dtype)
        CogVideoXPipeline(**components).save_pretrained(staging)
        if output_dir.exists():
            os.replace(output_dir, workspace / REPLACED_NAME)
        os.replace(staging, output_dir)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    logger.info("wrote the %s base model (seed %d) to %s", preset, seed, output_dir)
    return output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m thematrix.base_model",
        description="Write a random-weight CogVideoX base model (a diffusers directory) built from a preset, "
        "with a tokenizer trained locally. Stage 1 trains from it.",
    )
    parser.add_argument(
        "--preset",
        required=True,
        choices=sorted(PRESETS),
        help="architecture: 'tiny' for CPU tests and the demo, 'mini' to pretrain from scratch "
        "(thematrix/pretrain/), 'cogvideox-2b' for full size",
    )
    parser.add_argument(
        "--output_dir",
        required=True,
        type=Path,
        help="directory to write; must not exist or be empty unless --overwrite is given",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the saved weights (default: float32)"
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="device that initialises the weights; 'cuda' is much faster for cogvideox-2b (default: cpu)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        return build_base_model(
            args.preset, args.output_dir, args.seed, DTYPES[args.dtype], overwrite=args.overwrite, device=args.device
        )
    except FileExistsError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
