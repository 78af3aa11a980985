"""Generate a video steered by controls with a stage 2 model, the active control drawn on each frame.

    python inference.py --model_dir ../outputs/stage2/model --controls "IDLE,MAIN,MAIN,LEFT,LEFT,IDLE,..." --output video.mp4

Controls are the model's own tokens, one per latent frame (13 for 49 frames), or one per video frame with
--per_video_frame; without --controls every token of its vocabulary is held in turn. The prompt, length, size,
frame rate and text guidance default to what the model directory records of its training (see
stage1/inference.py): a stage that dropped every caption, as the mini config does, samples without guidance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stage1.inference import add_clip_arguments, check_clip_options
from stage2.cogvideox.pipeline_cogvideox import InteractivePipeline, latent_frame_count, parse_controls
from thematrix.cli import run
from thematrix.controls import cycle_controls, default_control_pattern, video_frame_labels
from thematrix.model_dir import vae_architecture
from thematrix.models.interactive_transformer import model_vocabulary
from thematrix.video import draw_control_overlay, pipeline_video_to_signed, tensor_to_uint8_frames, write_mp4


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a stage 2 (or later) model directory: <output_dir>/model")
    parser.add_argument(
        "--controls",
        default=None,
        help="comma-separated control tokens of the model (default: each token in turn, cycled)",
    )
    parser.add_argument("--per_video_frame", action="store_true", help="--controls has one token per video frame")
    parser.add_argument("--control_guidance_scale", type=float, default=1.0, help="> 1 strengthens the controls")
    add_clip_arguments(parser)
    args = parser.parse_args(argv)
    model_dir = check_clip_options(args, InteractivePipeline)
    vocabulary = model_vocabulary(model_dir)
    compression = vae_architecture(model_dir).config.temporal_compression_ratio
    num_latent_frames = latent_frame_count(args.num_frames, compression)
    if args.controls is None:
        tokens = cycle_controls(default_control_pattern(vocabulary), num_latent_frames)
    else:
        tokens = parse_controls(args.controls, vocabulary, num_latent_frames, compression, args.per_video_frame)

    pipeline = InteractivePipeline.from_model_dir(model_dir)
    output = pipeline(
        prompt=args.prompt,
        controls=tokens,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        control_guidance_scale=args.control_guidance_scale,
        generator=torch.Generator(device=pipeline.device).manual_seed(args.seed),
        output_type="pt",
    )
    video = pipeline_video_to_signed(output.frames[0])
    frames = draw_control_overlay(
        tensor_to_uint8_frames(video.cpu()), video_frame_labels(output.controls[0], compression)
    )
    path = Path(args.output)
    write_mp4(frames, path, fps=args.fps)
    print(f"video: {path.resolve()}")
    return path


if __name__ == "__main__":
    run(main)
