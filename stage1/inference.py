"""Generate a video from a prompt with a stage 1 model (fused, or base + LoRA) and write an mp4.

    python inference.py --model_dir ../outputs/stage1-fused --output video.mp4

The prompt, frame count, size, frame rate and text guidance default to what the model directory (or --lora_dir)
records of its training: a caption of its footage, its longest clip, its clip size and frame rate, and no text
guidance where its run dropped every caption. A base model records none: pass --prompt; it generates its native
size at CogVideoX's frame rate and guidance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stage1.cogvideox.pipeline_cogvideox import GameVideoPipeline
from thematrix.cli import run
from thematrix.config import ConfigError, first_given, setting_from_model
from thematrix.model_dir import (
    COGVIDEOX_FPS,
    DEFAULT_TEXT_GUIDANCE,
    GenerationDefaults,
    generation_defaults,
    vae_architecture,
)
from thematrix.video import pipeline_video_to_signed, tensor_to_uint8_frames, write_mp4


def add_clip_arguments(parser: argparse.ArgumentParser) -> None:
    """The options stages 1 and 2 share: prompt, length, size, sampling, output."""
    parser.add_argument(
        "--prompt",
        default=None,
        help='default: the prompt the model records (a caption of its footage); "" for the empty caption',
    )
    parser.add_argument("--num_frames", type=int, default=None, help="4k+1 frames (default: the model's longest clip)")
    parser.add_argument("--height", type=int, default=None, help="default: the model's")
    parser.add_argument("--width", type=int, default=None, help="default: the model's")
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="text guidance (default: the model's record (1, no guidance, where its run dropped every caption), else "
        f"CogVideoX's {DEFAULT_TEXT_GUIDANCE:g})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=int, default=None, help="frame rate of the mp4 (default: the model's)")
    parser.add_argument("--output", default="output.mp4")


def clip_sampling(
    record: GenerationDefaults, prompt: str | None, guidance_scale: float | None, model_dir: str | Path
) -> tuple[str, float]:
    """The prompt and text guidance a clip is sampled with: those given, else what the model's ``record`` holds
    (the empty caption and no guidance for a run that dropped every caption), else CogVideoX's guidance. A model
    that records no prompt (a base model) needs one given."""
    prompt = first_given(prompt, record.prompt)
    if prompt is None:
        raise ConfigError(f"--prompt: the model at {model_dir} records no prompt (a base model); pass --prompt")
    return prompt, first_given(guidance_scale, record.guidance_scale, DEFAULT_TEXT_GUIDANCE)


def check_clip_options(
    args: argparse.Namespace, pipeline_class: type[GameVideoPipeline], lora_dir: str | None = None
) -> Path:
    """The model's local directory, once the options are checked against it and completed from what it (or
    ``lora_dir``) records, before any weight loads; ``--fps`` must agree with the model's. ``--guidance_scale``
    unset takes the model's recorded guidance, else CogVideoX's default."""
    model_dir = pipeline_class.check_stage_model(args.model_dir)
    defaults = (lora_dir and GenerationDefaults.load(lora_dir)) or generation_defaults(model_dir)
    args.fps = setting_from_model("--fps", args.fps, defaults.fps, f"the model at {model_dir}") or COGVIDEOX_FPS
    args.prompt, args.guidance_scale = clip_sampling(defaults, args.prompt, args.guidance_scale, model_dir)
    args.num_frames = args.num_frames or defaults.num_frames
    args.height, args.width = args.height or defaults.height, args.width or defaults.width
    temporal = vae_architecture(model_dir).config.temporal_compression_ratio
    if (args.num_frames - 1) % temporal:
        raise ConfigError(
            f"--num_frames {args.num_frames}: this model makes {temporal}k+1 frames, e.g. {temporal * 4 + 1}"
        )
    return model_dir


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model_dir", required=True, help="a fused stage 1 model or the base model (or a Hugging Face id)"
    )
    parser.add_argument("--lora_dir", default=None, help="optional: stage 1 LoRA weights to apply to --model_dir")
    add_clip_arguments(parser)
    args = parser.parse_args(argv)
    model_dir = check_clip_options(args, GameVideoPipeline, args.lora_dir)

    pipeline = GameVideoPipeline.from_model_dir(model_dir, lora_dir=args.lora_dir)
    generator = torch.Generator(device=pipeline.device).manual_seed(args.seed)
    video = pipeline(
        prompt=args.prompt,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        generator=generator,
        output_type="pt",
    ).frames[0]
    output = Path(args.output)
    write_mp4(tensor_to_uint8_frames(pipeline_video_to_signed(video)), output, fps=args.fps)
    print(f"video: {output.resolve()}")
    return output


if __name__ == "__main__":
    run(main)
