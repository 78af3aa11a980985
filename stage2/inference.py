"""Generate a video steered by controls with a stage 2 model, the active control drawn on each frame.

    python inference.py --model_dir ../outputs/stage2/model --controls "D,D,DL,DL,DR,DR,D,D,D,D,D,D,D" --output drive.mp4

Controls are one token per latent frame (13 for 49 frames), or one per video frame with --per_video_frame.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stage1.inference import DEFAULT_PROMPT
from stage2.cogvideox.pipeline_cogvideox import InteractivePipeline
from thematrix.cli import run
from thematrix.controls import video_frame_labels
from thematrix.video import draw_control_overlay, tensor_to_uint8_frames, write_mp4


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a stage 2 (or later) model directory: <output_dir>/model")
    parser.add_argument("--controls", required=True, help='comma-separated control tokens, e.g. "D,D,DL"')
    parser.add_argument("--per_video_frame", action="store_true", help="--controls has one token per video frame")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--num_frames", type=int, default=None, help="4k+1 frames (default: the model's native count)")
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--guidance_scale", type=float, default=6.0)
    parser.add_argument("--control_guidance_scale", type=float, default=1.0, help="> 1 strengthens the controls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--output", default="output.mp4")
    args = parser.parse_args(argv)

    pipeline = InteractivePipeline.from_model_dir(args.model_dir)
    video, tokens = pipeline(
        prompt=args.prompt,
        controls=args.controls,
        num_frames=args.num_frames,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        control_guidance_scale=args.control_guidance_scale,
        per_video_frame_controls=args.per_video_frame,
        generator=torch.Generator(device=pipeline.device).manual_seed(args.seed),
    )
    frames = draw_control_overlay(tensor_to_uint8_frames(video.cpu()), video_frame_labels(tokens, pipeline.temporal_compression))
    output = Path(args.output)
    write_mp4(frames, output, fps=args.fps)
    print(f"video: {output.resolve()}")
    return output


if __name__ == "__main__":
    run(main)
