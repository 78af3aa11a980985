"""Merge stage 1's LoRA into the base model: writes the full model directory stage 2 trains from.

    python fuse_lora_weights.py --base_model path/to/CogVideoX-2b --lora_dir ../outputs/stage1-lora \\
        --output_dir ../outputs/stage1-fused
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stage1.cogvideox.pipeline_cogvideox import GameVideoPipeline
from thematrix.cli import run
from thematrix.model_dir import LORA_WEIGHT_NAME, GenerationDefaults, save_model_dir


def fuse_lora(base_model: str | Path, lora_dir: str | Path, output_dir: str | Path, lora_scale: float = 1.0) -> Path:
    """Fold the LoRA into the base transformer in float32 and save the model directory atomically.

    Only the transformer is loaded and written (float32), with how stage 1 trained (its
    ``GenerationDefaults``, beside the LoRA weights); the T5 encoder, VAE, tokenizer and scheduler are
    the base model's files, unchanged. ``base_model`` may be a Hugging Face id.
    """
    lora_file = Path(lora_dir) / LORA_WEIGHT_NAME
    if not lora_file.is_file():
        raise FileNotFoundError(
            f"--lora_dir {lora_dir}: no {LORA_WEIGHT_NAME}; pass the output_dir of stage 1 training"
        )
    base_model = GameVideoPipeline.check_stage_model(base_model, "--base_model")
    transformer = GameVideoPipeline.transformer_class.from_pretrained(
        base_model, subfolder="transformer", dtype=torch.float32
    )
    pipeline = GameVideoPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer, scheduler=None)
    pipeline.load_lora_weights(str(lora_dir))
    pipeline.fuse_lora(lora_scale=lora_scale)
    pipeline.unload_lora_weights()
    return save_model_dir(pipeline.transformer, base_model, output_dir, GenerationDefaults.load(lora_dir))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--base_model", required=True, help="the model stage 1 trained on (pretrained_model_name_or_path)"
    )
    parser.add_argument("--lora_dir", required=True, help="stage 1's output_dir, holding " + LORA_WEIGHT_NAME)
    parser.add_argument("--output_dir", required=True, help="where to write the fused model directory")
    parser.add_argument("--lora_scale", type=float, default=1.0, help="strength of the LoRA (default: %(default)s)")
    args = parser.parse_args(argv)
    output = fuse_lora(args.base_model, args.lora_dir, args.output_dir, args.lora_scale)
    print(f"fused model: {output.resolve()}")


if __name__ == "__main__":
    run(main)
