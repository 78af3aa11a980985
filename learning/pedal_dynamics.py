"""Whether the pedals change the car's speed: the scene's speed and its change per latent frame, by commanded
pedal, in real footage and in a model's clips.

    python learning/pedal_dynamics.py --model_dir outputs/learning/models/stage2/model \\
        --data_root outputs/learning/footage/heldout --index_file outputs/learning/footage/heldout/index.json \\
        --scene_rows 0 82

The scene's speed in a latent frame is the mean absolute difference between its consecutive frames over the
scene's rows (above CarRacing's HUD); its change is that minus the previous latent frame's. In the game, gas
speeds the car up and the brake slows it down; a model that renders the pedals shows the same signs under the
commanded pedals (the IDM's pedal agreement says whether, this says which pedal and how much). A model without
controls (stage 1) gets the same commands, which it does not see: its speeds are the base model's. Clips are
sampled as the model records (its prompt and text guidance) unless ``--prompt`` or ``--guidance_scale`` say
otherwise; stage 1 records its footage's first caption, which names a motion, so the chain gives it the scene's
prompt, as it does for its clips' measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from results_page import KEY_PARTS, fmt_mean

from thematrix.controls import data_root_vocabulary
from thematrix.evaluation.footage import load_real_clips
from thematrix.evaluation.generation import (
    clip_pipeline,
    commanded_controls,
    frame_size,
    generate_clips,
    model_vocabulary,
    recorded_sampling,
    temporal_compression,
)

PEDAL = KEY_PARTS["pedal"]


def scene_speed(frames: torch.Tensor, rows: slice) -> torch.Tensor:
    """``[n - 1]``: mean absolute difference of each pair of consecutive uint8 frames over ``rows``."""
    scene = frames[:, :, rows].float()
    return (scene[1:] - scene[:-1]).abs().mean(dim=(1, 2, 3))


def latent_frame_speeds(frames: torch.Tensor, ends: list[int], c: int, rows: slice) -> list[tuple[float, float]]:
    """For each latent frame whose last video frame is ``ends[i]``: (its speed, its speed minus the previous latent
    frame's)."""
    speed = scene_speed(frames, rows)
    return [
        (speed[end - c : end].mean().item(), (speed[end - c : end].mean() - speed[end - 2 * c : end - c].mean()).item())
        for end in ends
    ]


def by_pedal(values: list[float], tokens: list[str]) -> dict[str, dict]:
    """Mean, its standard error and count per pedal."""
    groups: dict[str, list[float]] = {}
    for value, token in zip(values, tokens):
        groups.setdefault(PEDAL(token), []).append(value)
    return {
        pedal: {
            "mean": statistics.fmean(group),
            "standard_error": statistics.stdev(group) / len(group) ** 0.5 if len(group) > 1 else None,
            "count": len(group),
        }
        for pedal, group in sorted(groups.items())
    }


def measures(speeds: list[tuple[float, float]], tokens: list[str]) -> dict[str, dict]:
    return {
        "speed": by_pedal([speed for speed, _ in speeds], tokens),
        "speed_change": by_pedal([change for _, change in speeds], tokens),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a model of stage 1 or 2")
    parser.add_argument("--data_root", required=True, help="held-out real footage")
    parser.add_argument("--index_file", required=True)
    parser.add_argument("--scene_rows", type=int, nargs=2, required=True, metavar=("TOP", "BOTTOM"))
    parser.add_argument("--num_clips", type=int, default=16)
    parser.add_argument("--num_latent_frames", type=int, default=11)
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--prompt", default=None, help="default: the model's recorded prompt (a base model has none)")
    parser.add_argument("--guidance_scale", type=float, default=None, help="default: the model's recorded guidance")
    parser.add_argument("--control_guidance_scale", type=float, default=3.0)
    parser.add_argument("--max_frames", type=int, default=105)
    parser.add_argument("--fps", type=float, default=10.0, help="the frame rate the model trained at")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    args.prompt, args.guidance_scale = recorded_sampling(args.model_dir, args.prompt, args.guidance_scale)
    rows = slice(*args.scene_rows)
    pipeline = clip_pipeline(args.model_dir)
    c = temporal_compression(pipeline)
    height, width = frame_size(pipeline)
    vocabulary = data_root_vocabulary(args.data_root)
    with torch.no_grad():
        real = load_real_clips(
            args.data_root,
            args.index_file,
            vocabulary,
            fps=args.fps,
            height=height,
            width=width,
            temporal_compression=c,
            max_frames=args.max_frames,
            vae=pipeline.vae,  # the model's own VAE, which its clips come out of
        )
    real_speeds, real_tokens = [], []
    for start, length in zip(real.starts, real.lengths):
        ends = list(range(2 * c, length, c))
        real_speeds += latent_frame_speeds(real.frames[start : start + length], ends, c, rows)
        real_tokens += [vocabulary.tokens[real.labels[start + end]] for end in ends]
    seeds = list(range(args.num_clips))
    commands = [
        commanded_controls(model_vocabulary(pipeline) or vocabulary, args.num_latent_frames, seed) for seed in seeds
    ]
    videos = generate_clips(
        pipeline,
        args.prompt,
        commands,
        seeds,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        control_guidance_scale=args.control_guidance_scale,
    )
    generated_speeds, generated_tokens = [], []
    for video, tokens in zip(videos, commands, strict=True):
        # Latent frame j >= 1 holds video frames c(j - 1) + 1 .. cj; latent frame 1 has no previous latent frame's motion.
        ends = [c * index for index in range(2, len(tokens))]
        generated_speeds += latent_frame_speeds(video.frames, ends, c, rows)
        generated_tokens += tokens[2:]
    results = {"real": measures(real_speeds, real_tokens), "generated": measures(generated_speeds, generated_tokens)}
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        settings = vars(args) | {"output": str(args.output)}
        args.output.write_text(json.dumps({"settings": settings, **results}, indent=2))
    print("| pedal | measure | real footage | generated |")
    print("| --- | --- | --- | --- |")
    for measure in ("speed", "speed_change"):
        for pedal in results["real"][measure]:
            cells = [fmt_mean(results[kind][measure].get(pedal)) for kind in ("real", "generated")]
            print(f"| {pedal} | {measure} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
