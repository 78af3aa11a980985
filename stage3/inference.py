"""Stream a video of any length with a stage 3 model, steered by controls, written to an mp4 as it is made.

    python inference.py --model_dir ../outputs/stage3/model --data_root ../footage \\
        --index_file ../footage/index.json --seconds 60 --random_controls --output stream.mp4

The model directory gives the window, frame rate, frame size and control vocabulary it was trained with; an
option that contradicts it is an error. Its record also gives the default text guidance: none (1) for a model
whose stage dropped every caption (as the mini configs of stages 2 and 3 do), else the sampler's; such a model
streams under the empty caption it trained with, any other under the initial clip's caption, else its recorded
prompt, unless --prompt is given. The stream continues a clip: --initial_video FILE (its last frames),
or sample --sample_index of a dataset (--data_root, --index_file); either must hold one training clip at the
model's frame rate (1 + 4 * (2 + G * W) frames: 73 for the recipe's window of 4 groups of 4). Controls are a
comma-separated pattern of the model's tokens cycled per latent frame (default: every token in turn), or
--random_controls (a random key held for a random number of groups). The mp4 grows at OUTPUT.partial while
the stream runs (a player can open it) and moves to OUTPUT when done; each frame shows its control.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX

from stage1.cogvideox.pipeline_cogvideox import default_device_and_dtype
from stage3.cogvideox.pipeline_cogvideox import (
    RECIPE_GROUP_SIZE,
    RECIPE_NUM_GROUPS,
    SwinDPMPipeline,
    condition_control,
    window_clip_frames,
)
from thematrix.acceleration import apply_stream_fast_paths, check_device, check_fp8
from thematrix.cli import run
from thematrix.config import ConfigError, first_given, setting_from_model
from thematrix.controls import CONTROL_SEPARATOR, ControlVocabulary, default_control_pattern
from thematrix.data.index import Sample, load_index
from thematrix.data.initial_clip import InitialClip, sample_start, video_end
from thematrix.model_dir import (
    COGVIDEOX_FPS,
    DEFAULT_TEXT_GUIDANCE,
    EMPTY_CAPTION,
    GenerationDefaults,
    generation_defaults,
    transformer_config,
    vae_architecture,
)
from thematrix.models.interactive_transformer import model_vocabulary
from thematrix.parallel import (
    check_context_parallel,
    check_decode_device_outside_group,
    enable_context_parallel,
    init_context_parallel_process,
    is_main_process,
)
from thematrix.precompile import DEFAULT_PRECOMPILED_DIR, PRECOMPILED_DIR_VARIABLE
from thematrix.video import draw_control_overlay, tensor_to_uint8_frames
from thematrix.video_stream import Mp4StreamWriter

MAX_HOLD_GROUPS = 4  # random controls hold a key for 1..MAX_HOLD_GROUPS groups, as a player would
# The sampler's defaults, where neither the options nor the model's record (its guidance) say otherwise.
SWIN_DPM_DEFAULTS = {"num_inference_steps": 20, "guidance_scale": DEFAULT_TEXT_GUIDANCE}


def random_controls(vocabulary: ControlVocabulary, group_size: int, seed: int) -> Iterator[list[str]]:
    """Endless, seeded key sequences: a random token held for a random number of groups, then another."""
    rng = random.Random(seed)
    while True:
        token = rng.choice(vocabulary.tokens)
        for _ in range(rng.randint(1, MAX_HOLD_GROUPS)):
            yield [token] * group_size


@dataclass
class StreamStart:
    """What a stream front end (this script, play.py) knows before its model loads, all of it checked: the model
    directory, its vocabulary and what it records (``defaults``), the length and size of the clip a stream
    starts from, and the dataset's usable samples (none without ``--index_file``)."""

    model_dir: Path
    vocabulary: ControlVocabulary
    defaults: GenerationDefaults
    vae_layout: AutoencoderKLCogVideoX  # without weights: its factors
    initial_frames: int  # window_clip_frames: 1 + c * (H + G * W)
    samples: list[Sample]
    # --context_parallel: whether it splits the heads and tokens evenly (else diffusers' uneven Ulysses)
    context_parallel_splits_evenly: bool = True

    @property
    def temporal_compression(self) -> int:
        return self.vae_layout.config.temporal_compression_ratio

    def from_sample(self, index: int, fps: float) -> InitialClip:
        """The first frames of usable sample ``index``, with its caption and its condition latent frame's control."""
        item = sample_start(
            self.samples,
            index,
            fps=fps,
            height=self.defaults.height,
            width=self.defaults.width,
            frames=self.initial_frames,
            temporal_compression=self.temporal_compression,
            vocabulary=self.vocabulary,
        )
        initial_control = condition_control(item["control_tokens"], self.vae_layout)
        return InitialClip(item["video"], Path(item["path"]).name, item["caption"], initial_control)

    def from_file(self, path: Path, fps: float) -> InitialClip:
        """The last frames of a video file."""
        video = video_end(path, fps, self.defaults.height, self.defaults.width, self.initial_frames)
        return InitialClip(video, Path(path).name, path=Path(path))


def check_stream_options(
    args: argparse.Namespace, pipeline_class=SwinDPMPipeline, defaults: dict = SWIN_DPM_DEFAULTS
) -> StreamStart:
    """Complete and check the stream's options against the model directory, before any weight loads.

    Unset, ``--num_groups``, ``--group_size`` and ``--fps`` take what the model records (else the recipe's window
    at CogVideoX's frame rate); set, they must agree with it. Unset, ``--guidance_scale`` takes the model's recorded
    guidance, else the sampler's (``defaults``). Then the step count and the dataset's index, checked against the
    model's vocabulary (each unusable entry printed).
    """
    model_dir = pipeline_class.check_stage_model(args.model_dir)
    recorded = generation_defaults(model_dir)
    vocabulary = model_vocabulary(model_dir)
    model = f"the model at {model_dir}"
    args.num_groups = (
        setting_from_model("--num_groups", args.num_groups, recorded.num_groups, model) or RECIPE_NUM_GROUPS
    )
    args.group_size = (
        setting_from_model("--group_size", args.group_size, recorded.group_size, model) or RECIPE_GROUP_SIZE
    )
    args.fps = setting_from_model("--fps", args.fps, recorded.fps, model) or COGVIDEOX_FPS
    args.guidance_scale = first_given(args.guidance_scale, recorded.guidance_scale, defaults["guidance_scale"])
    args.num_inference_steps = args.num_inference_steps or args.num_groups
    if args.decode_device is not None:
        check_device("--decode_device", args.decode_device)
    if args.fp8:
        check_fp8("--fp8", default_device_and_dtype()[0])
    splits_evenly = True
    if args.context_parallel is not None:
        splits_evenly = check_context_parallel_options(args, model_dir, recorded)
    try:
        pipeline_class.check_steps(args.num_inference_steps, args.num_groups)
    except ValueError as error:
        raise ConfigError(f"--num_inference_steps: {error}") from None
    samples = []
    if args.index_file is not None:
        samples, problems = load_index(
            args.index_file, args.data_root, vocabulary, allow_outside_data_root=args.allow_paths_outside_data_root
        )
        for problem in problems:
            print(f"skipped: {problem}")
    vae = vae_architecture(model_dir)
    return StreamStart(
        model_dir=model_dir,
        vocabulary=vocabulary,
        defaults=recorded,
        vae_layout=vae,
        initial_frames=window_clip_frames(vae, args.num_groups, args.group_size),
        samples=samples,
        context_parallel_splits_evenly=splits_evenly,
    )


def check_context_parallel_options(args: argparse.Namespace, model_dir: Path, defaults: GenerationDefaults) -> bool:
    """--context_parallel N: a split of the model's heads and of its window's tokens over N GPUs, with rank 0's
    decoder on a GPU outside them if --decode_device is given; whether the split is even."""
    if args.decode_device is not None:
        check_decode_device_outside_group(args.context_parallel, torch.device(args.decode_device))
    config = transformer_config(model_dir)
    vae = vae_architecture(model_dir)
    patch = config["patch_size"] * 2 ** (len(vae.config.block_out_channels) - 1)
    height, width = defaults.height, defaults.width
    return check_context_parallel(
        args.context_parallel,
        heads=config["num_attention_heads"],
        text_tokens=config["max_text_seq_length"],
        frame_tokens=(height // patch) * (width // patch),
        window=f"{height}x{width} frames in patches of {patch}x{patch} pixels",
    )


def add_stream_arguments(parser: argparse.ArgumentParser, defaults: dict = SWIN_DPM_DEFAULTS) -> None:
    """The options every front end of the stream shares (this script and play.py): model, initial clip, sampling,
    with the sampler's ``defaults`` (its guidance only where the model records none: check_stream_options)."""
    parser.add_argument("--model_dir", required=True, help="the stage's model directory: <output_dir>/model")

    start = parser.add_argument_group("initial clip: --initial_video, or a dataset sample")
    start.add_argument("--initial_video", type=Path, default=None, help="a video file; the stream continues its end")
    start.add_argument("--data_root", default=None, help="folder the index's paths are relative to")
    start.add_argument("--index_file", default=None, help="index JSON of the dataset")
    start.add_argument("--sample_index", type=int, default=0, help="which usable sample of the index (default 0)")
    start.add_argument(
        "--allow_paths_outside_data_root",
        action="store_true",
        help="accept index entries whose path leads outside --data_root",
    )

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument(
        "--prompt",
        default=None,
        help="default: the sample's caption, else the model's prompt; \"\" for the empty caption (for a model "
        "whose stage dropped every caption, as the mini configs of stages 2 and 3 do)",
    )
    sampling.add_argument("--seed", type=int, default=0, help="seeds the noise and --random_controls")
    sampling.add_argument(
        "--num_inference_steps",
        type=int,
        default=defaults["num_inference_steps"],
        help="N, a multiple of --num_groups (default: %(default)s; None = one step per group)",
    )
    sampling.add_argument(
        "--num_groups", type=int, default=None, help="G: noise groups in the window (default: the model's)"
    )
    sampling.add_argument(
        "--group_size", type=int, default=None, help="W: latent frames per group (default: the model's)"
    )
    sampling.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="text guidance (default: the model's record (1, no guidance, where its run dropped every caption), else "
        f"{defaults['guidance_scale']:g})",
    )
    sampling.add_argument("--control_guidance_scale", type=float, default=1.0, help="> 1 strengthens the controls")
    sampling.add_argument(
        "--fps", type=int, default=None, help="frame rate of the initial clip and of the mp4 (default: the model's)"
    )

    speed = parser.add_argument_group("speed (GPU; bench/RESULTS.md measures each)")
    speed.add_argument(
        "--compile",
        action="store_true",
        help="compile the transformer's blocks and the VAE decoder and encoder: the first stream pays the compilation; "
        f"the graphs are saved in ${PRECOMPILED_DIR_VARIABLE} (default {DEFAULT_PRECOMPILED_DIR}) and later launches "
        "load them",
    )
    speed.add_argument(
        "--overlap_decode",
        action="store_true",
        help="decode each group while the next group's forwards run: more frames per second, and one group more "
        "between choosing a key and seeing its frames",
    )
    speed.add_argument(
        "--fp8",
        action="store_true",
        help="the transformer blocks' matmuls in FP8 (torchao; GPUs with FP8 tensor cores, e.g. H100): faster "
        "forwards, at an error bench/RESULTS.md states",
    )
    speed.add_argument(
        "--decode_device",
        default=None,
        help="a second GPU (e.g. cuda:1) that holds the VAE and decodes each group while the first runs the next "
        "group's forwards (the --overlap_decode order; default: the transformer's device)",
    )
    speed.add_argument(
        "--context_parallel",
        type=int,
        default=None,
        metavar="N",
        help="split each transformer forward's tokens over N GPUs, cuda:0 to cuda:N-1 (Ulysses attention, diffusers' "
        "enable_parallelism); launch with torchrun --nproc_per_node N; rank 0 decodes and writes the video, on its "
        "own GPU or on --decode_device cuda:N",
    )


def parse_args(
    argv=None, description: str = __doc__, defaults: dict = SWIN_DPM_DEFAULTS, pipeline_class=SwinDPMPipeline
) -> argparse.Namespace:
    """The stream's options, checked before a model is loaded; a later stage passes its own description,
    sampling defaults and pipeline."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_arguments(parser, defaults)

    length = parser.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, default=60.0, help="video length at --fps (default 60)")
    length.add_argument("--groups", type=int, default=None, help="number of groups to emit instead of --seconds")

    controls = parser.add_mutually_exclusive_group()
    controls.add_argument(
        "--controls",
        help="control tokens cycled per latent frame, comma-separated "
        "(default: every token of the model's vocabulary in turn)",
    )
    controls.add_argument("--random_controls", action="store_true", help="random keys, each held for some groups")

    parser.add_argument("--output", type=Path, default=Path("output.mp4"))
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
    check_step_options(parser, args, pipeline_class)
    return args


def load_pipeline(args: argparse.Namespace, start: StreamStart, pipeline_class=SwinDPMPipeline) -> SwinDPMPipeline:
    """The model's pipeline, with the fast paths the options ask for."""
    device = init_context_parallel_process() if args.context_parallel else None
    pipeline = pipeline_class.from_model_dir(start.model_dir, device=device)
    if args.context_parallel:
        enable_context_parallel(pipeline.transformer, args.context_parallel, start.context_parallel_splits_evenly)
    if not is_main_process():  # context parallelism: rank 0 alone encodes and decodes
        pipeline.place_decoder(None)
    elif args.decode_device is not None:
        pipeline.place_decoder(args.decode_device)
    apply_stream_fast_paths(pipeline, args.fp8, args.compile)
    return pipeline


def check_step_options(parser: argparse.ArgumentParser, args: argparse.Namespace, pipeline_class) -> None:
    """With --num_groups given, a step count the stream cannot take is refused at once (else once the model's
    window is known)."""
    if args.num_groups is not None:
        try:
            pipeline_class.check_steps(args.num_inference_steps or args.num_groups, args.num_groups)
        except ValueError as error:
            parser.error(str(error))


def main(
    argv=None, pipeline_class=SwinDPMPipeline, description: str = __doc__, defaults: dict = SWIN_DPM_DEFAULTS
) -> Path:
    args = parse_args(argv, description, defaults, pipeline_class)
    start = check_stream_options(args, pipeline_class, defaults)
    vocabulary = start.vocabulary
    if args.random_controls:
        controls = random_controls(vocabulary, args.group_size, args.seed)
    else:
        controls = args.controls or CONTROL_SEPARATOR.join(default_control_pattern(vocabulary))
        vocabulary.parse(controls)
    if args.initial_video is not None:
        clip = start.from_file(args.initial_video, args.fps)
    else:
        clip = start.from_sample(args.sample_index, args.fps)
        print(f"initial clip: {clip.name} ({len(clip.video)} frames)")
    # A model whose run dropped every caption records the empty one: a clip's caption is no prompt it knows.
    caption = None if start.defaults.prompt == EMPTY_CAPTION else clip.caption
    prompt = first_given(args.prompt, caption, start.defaults.prompt)
    if prompt is None:
        raise ConfigError(
            f"--prompt: {start.model_dir} records no prompt and --initial_video has no caption; pass --prompt"
        )

    pipeline = load_pipeline(args, start, pipeline_class)
    frames_per_group = start.temporal_compression * args.group_size
    num_groups = args.groups or max(1, math.ceil(args.seconds * args.fps / frames_per_group))
    stream = pipeline.stream(
        prompt,
        clip.video,
        controls,
        num_groups=args.num_groups,
        group_size=args.group_size,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        control_guidance_scale=args.control_guidance_scale,
        generator=torch.Generator(device=pipeline.device).manual_seed(args.seed),
        max_groups=num_groups,
        initial_control=clip.initial_control,
        overlap_decode=args.overlap_decode,
    )
    if not is_main_process():  # context parallelism: every rank takes part in each forward, rank 0 decodes
        for _ in stream:
            pass
        return args.output
    start_time = previous = time.perf_counter()
    with Mp4StreamWriter(args.output, fps=args.fps) as writer:
        print(f"writing {writer.partial_path}, renamed to {args.output} when done")
        for chunk in stream:
            writer.write(draw_control_overlay(tensor_to_uint8_frames(chunk.frames), chunk.frame_controls))
            if chunk.group_index == 0:
                print(f"time to first frame: {chunk.elapsed_s:.2f} s")
            now = time.perf_counter()
            print(
                f"group {chunk.group_index + 1}/{num_groups}: {len(chunk.frames)} frames in {now - previous:.2f} s "
                f"({len(chunk.frames) / (now - previous):.1f} FPS), controls {','.join(chunk.controls)}",
                flush=True,
            )
            previous = now
    total = time.perf_counter() - start_time
    print(f"{writer.frames_written} frames in {total:.2f} s: {writer.frames_written / total:.2f} frames per second")
    print(f"video: {args.output.resolve()}")
    return args.output


if __name__ == "__main__":
    run(main)
