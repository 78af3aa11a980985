"""Stream a video of any length with a stage 3 model, steered by controls, written to an mp4 as it is made.

    python inference.py --model_dir ../outputs/stage3/model --data_root ../data/footage \\
        --index_file ../data/footage/index.json --seconds 60 --controls "D,D,DL,DL,D,D,DR,DR" --output drive.mp4

The stream continues a clip: --initial_video FILE (its last frames), or sample --sample_index of a dataset
(--data_root, --index_file); either must hold one training clip (73 frames at --fps for the default
window). Controls are a comma-separated pattern cycled per latent frame, or --random_controls (a random
key held for a random number of groups). The mp4 grows at OUTPUT.partial while the stream runs (a player
can open it) and moves to OUTPUT when done; each frame shows its control.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import decord
import numpy as np
import torch

from stage1.inference import DEFAULT_PROMPT
from stage3.cogvideox.pipeline_cogvideox import SwinDPMPipeline, history_latent_frames, window_clip_frames
from thematrix.cli import run
from thematrix.controls import ControlVocabulary
from thematrix.data.dataset import (
    FPS_TOLERANCE,
    UINT8_HALF_RANGE,
    DatasetError,
    VideoDataset,
    resize_center_crop,
    time_indices,
)
from thematrix.data.index import load_index
from thematrix.video import draw_control_overlay, tensor_to_uint8_frames
from thematrix.video_stream import Mp4StreamWriter

MAX_HOLD_GROUPS = 4  # random controls hold a key for 1..MAX_HOLD_GROUPS groups, as a player would


def random_controls(vocabulary: ControlVocabulary, group_size: int, seed: int) -> Iterator[list[str]]:
    """Endless, seeded key sequences: a random token held for a random number of groups, then another."""
    rng = random.Random(seed)
    while True:
        token = rng.choice(vocabulary.tokens)
        for _ in range(rng.randint(1, MAX_HOLD_GROUPS)):
            yield [token] * group_size


def read_initial_video(path: Path, fps: float, height: int, width: int, frames: int) -> torch.Tensor:
    """The last ``frames`` frames of a video file at ``fps``, resized and center-cropped as the dataset does:
    ``[frames, 3, H, W]`` in [-1, 1]."""
    if not path.is_file():
        raise FileNotFoundError(f"--initial_video {path}: no such file")
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    source_fps = float(reader.get_avg_fps())
    if source_fps < fps * (1 - FPS_TOLERANCE):
        raise DatasetError(f"--initial_video {path} is {source_fps:g} fps, below --fps {fps:g}; lower --fps")
    # Frames counted back from the last one, one per 1/fps seconds.
    steps_back = time_indices(np.arange(int(len(reader) * fps / source_fps) + 1), source_fps, fps)
    steps_back = steps_back[steps_back < len(reader)]
    if len(steps_back) < frames:
        raise DatasetError(
            f"--initial_video {path} gives {len(steps_back)} frames at {fps:g} fps; the stream starts from the last "
            f"{frames} ({frames / fps:.1f} s): pass a longer video"
        )
    indices = (len(reader) - 1 - steps_back[:frames])[::-1]
    frames = torch.from_numpy(reader.get_batch(indices.tolist()).asnumpy()).permute(0, 3, 1, 2).float()
    # The dataset's own resize and crop, which reads only the target size from the dataset.
    video = resize_center_crop(frames, height, width)
    return (video / UINT8_HALF_RANGE - 1.0).clamp(-1.0, 1.0)


def dataset_initial_video(args, vocabulary: ControlVocabulary, height: int, width: int, temporal_compression: int,
                          frames: int) -> dict:
    """The first ``frames`` frames of item ``--sample_index`` of the usable samples of the index, as
    ``VideoDataset`` gives them."""
    samples, problems = load_index(args.index_file, args.data_root, vocabulary)
    for problem in problems:
        print(f"skipped: {problem}")
    if not 0 <= args.sample_index < len(samples):
        raise DatasetError(
            f"--sample_index {args.sample_index}: {args.index_file} has {len(samples)} usable samples; pass 0.."
            f"{len(samples) - 1}"
        )
    try:
        dataset = VideoDataset([samples[args.sample_index]], fps=args.fps, height=height, width=width,
                               frame_buckets=(frames,), temporal_compression=temporal_compression, vocabulary=vocabulary)
    except DatasetError as error:
        raise DatasetError(f"--sample_index {args.sample_index}: the stream starts from {frames} frames; {error}") from None
    return dataset[0]


SWIN_DPM_DEFAULTS = {"num_inference_steps": 20, "guidance_scale": 6.0}


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every front end of the stream shares (this script and play.py): model, initial clip, sampling."""
    parser.add_argument("--model_dir", required=True, help="the stage's model directory: <output_dir>/model")

    start = parser.add_argument_group("initial clip: --initial_video, or a dataset sample")
    start.add_argument("--initial_video", type=Path, default=None, help="a video file; the stream continues its end")
    start.add_argument("--data_root", default=None, help="folder the index's paths are relative to")
    start.add_argument("--index_file", default=None, help="index JSON of the dataset")
    start.add_argument("--sample_index", type=int, default=0, help="which usable sample of the index (default 0)")

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--prompt", default=None, help="default: the sample's caption, else a driving prompt")
    sampling.add_argument("--seed", type=int, default=0, help="seeds the noise and --random_controls")
    sampling.add_argument("--num_inference_steps", type=int, help="N, a multiple of --num_groups (default: %(default)s; None = one step per group)")
    sampling.add_argument("--num_groups", type=int, default=4, help="G: noise groups in the window")
    sampling.add_argument("--group_size", type=int, default=4, help="W: latent frames per group")
    sampling.add_argument("--guidance_scale", type=float, help="text guidance (default: %(default)s)")
    sampling.add_argument("--control_guidance_scale", type=float, default=1.0, help="> 1 strengthens the controls")
    sampling.add_argument("--fps", type=float, default=8.0, help="frame rate of the model's videos and of the mp4")


def parse_args(argv=None, description: str = __doc__, defaults: dict = SWIN_DPM_DEFAULTS,
               pipeline_class=SwinDPMPipeline) -> argparse.Namespace:
    """The stream's options, checked before a model is loaded; a later stage passes its own description,
    sampling defaults and pipeline."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_arguments(parser)

    length = parser.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, default=60.0, help="video length at --fps (default 60)")
    length.add_argument("--groups", type=int, default=None, help="number of groups to emit instead of --seconds")

    controls = parser.add_mutually_exclusive_group(required=True)
    controls.add_argument("--controls", help='control tokens cycled per latent frame, e.g. "D,D,DL,DL"')
    controls.add_argument("--random_controls", action="store_true", help="random keys, each held for some groups")

    parser.add_argument("--output", type=Path, default=Path("output.mp4"))
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)

    from_dataset = args.data_root is not None or args.index_file is not None
    if args.initial_video is not None and from_dataset:
        parser.error("give --initial_video or --data_root/--index_file, not both")
    if args.initial_video is None and not (args.data_root and args.index_file):
        parser.error(
            "the stream needs an initial clip: pass --initial_video FILE, or --data_root DIR and --index_file "
            "INDEX (with --sample_index) to start from a dataset sample"
        )
    if args.groups is not None and args.groups < 1:
        parser.error(f"--groups must be at least 1, got {args.groups}")
    args.num_inference_steps = args.num_inference_steps or args.num_groups
    try:
        pipeline_class.check_steps(args.num_inference_steps, args.num_groups)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv=None, pipeline_class=SwinDPMPipeline, description: str = __doc__, defaults: dict = SWIN_DPM_DEFAULTS) -> Path:
    args = parse_args(argv, description, defaults, pipeline_class)
    pipeline = pipeline_class.from_model_dir(args.model_dir)
    vocabulary = pipeline.transformer.control_vocabulary
    compression = pipeline.temporal_compression
    _, height, width = pipeline.native_size
    # The stream starts from one training clip's worth of frames (see SwinDPMPipeline).
    frames = window_clip_frames(pipeline.vae, args.num_groups, args.group_size)
    prompt, initial_control = args.prompt or DEFAULT_PROMPT, None
    if args.initial_video is not None:
        initial_video = read_initial_video(args.initial_video, args.fps, height, width, frames)
    else:
        item = dataset_initial_video(args, vocabulary, height, width, compression, frames)
        initial_video = item["video"]
        initial_control = item["control_tokens"][history_latent_frames(pipeline.vae)]  # the condition latent's
        prompt = args.prompt or item["caption"]
        print(f"initial clip: {item['path']} ({len(initial_video)} frames)")

    frames_per_group = compression * args.group_size
    num_groups = args.groups or max(1, math.ceil(args.seconds * args.fps / frames_per_group))
    controls = random_controls(vocabulary, args.group_size, args.seed) if args.random_controls else args.controls
    stream = pipeline.stream(
        prompt, initial_video, controls, num_groups=args.num_groups, group_size=args.group_size,
        num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
        control_guidance_scale=args.control_guidance_scale,
        generator=torch.Generator(device=pipeline.device).manual_seed(args.seed),
        max_groups=num_groups, initial_control=initial_control,
    )
    start = previous = time.perf_counter()
    with Mp4StreamWriter(args.output, fps=args.fps) as writer:
        print(f"writing {writer.partial_path}, renamed to {args.output} when done")
        for chunk in stream:
            writer.write(draw_control_overlay(tensor_to_uint8_frames(chunk.frames), chunk.frame_controls))
            if chunk.group_index == 0:
                print(f"time to first frame: {chunk.elapsed_s:.2f} s")
            now = time.perf_counter()
            print(f"group {chunk.group_index + 1}/{num_groups}: {len(chunk.frames)} frames in {now - previous:.2f} s "
                  f"({len(chunk.frames) / (now - previous):.1f} FPS), controls {','.join(chunk.controls)}", flush=True)
            previous = now
    total = time.perf_counter() - start
    print(f"{writer.frames_written} frames in {total:.2f} s: {writer.frames_written / total:.2f} frames per second")
    print(f"video: {args.output.resolve()}")
    return args.output


if __name__ == "__main__":
    run(main)
