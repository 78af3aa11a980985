"""Generate a video from a prompt with a stage 1 model (fused, or base + LoRA) and write an mp4.

    python inference.py --model_dir ../outputs/stage1-fused --prompt "A red race car ..." --output car.mp4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stage1.cogvideox.pipeline_cogvideox import GameVideoPipeline
from thematrix.cli import run
from thematrix.video import tensor_to_uint8_frames, write_mp4

DEFAULT_PROMPT = "A red race car drives along a grey track through green grass, seen from above."


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a fused stage 1 model or the base model")
    parser.add_argument("--lora_dir", default=None, help="optional: stage 1 LoRA weights to apply to --model_dir")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--num_frames", type=int, default=None, help="4k+1 frames (default: the model's native count)")
    parser.add_argument("--height", type=int, default=None, help="default: the model's native height")
    parser.add_argument("--width", type=int, default=None, help="default: the model's native width")
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--guidance_scale", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=int, default=8, help="frame rate of the written mp4")
    parser.add_argument("--output", default="output.mp4")
    args = parser.parse_args(argv)

    pipeline = GameVideoPipeline.from_model_dir(args.model_dir, lora_dir=args.lora_dir)
    native_frames, native_height, native_width = pipeline.native_size
    generator = torch.Generator(device=pipeline.device).manual_seed(args.seed)
    video = pipeline(
        prompt=args.prompt,
        num_frames=args.num_frames or native_frames,
        height=args.height or native_height,
        width=args.width or native_width,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        generator=generator,
        output_type="pt",
    ).frames[0]
    output = Path(args.output)
    write_mp4(tensor_to_uint8_frames(video * 2 - 1), output, fps=args.fps)
    print(f"video: {output.resolve()}")
    return output


if __name__ == "__main__":
    run(main)
