"""Command line of the evaluation: ``python -m thematrix.evaluation {idm,clips,stream,speed,control_use} --help``.

    # 1. an inverse-dynamics model trained on real footage, and the held-out footage's reference statistics
    python -m thematrix.evaluation idm --model_dir BASE --data_root GAME --index_file GAME/index.json \\
        --heldout_data_root HELDOUT --heldout_index_file HELDOUT/index.json --fps 10 --output_dir IDM \\
        --drift_data_root RANDOM_PLAY --drift_index_file RANDOM_PLAY/index.json --drift_max_frames 1001
    # 2. clips under random commands (stage 1 and 2 models): control following, domain fit
    python -m thematrix.evaluation clips --model_dir MODEL --idm IDM --output clips.json
    # 3. long streams from real clips (stage 3 and 4 models): control following, domain fit, drift, speed
    python -m thematrix.evaluation stream --model_dir MODEL --sampler swin-dpm --idm IDM \\
        --data_root HELDOUT --index_file HELDOUT/index.json --output stream.json
    #    (each finished stream is kept in stream.streams/: run the same command again after a stop, or with more
    #    --num_streams, and it makes only the streams it lacks; --gpus 0,1,2,3 splits the streams over 4 GPUs)
    # 4. whether a model uses its keys at all (no IDM): denoising error with its own, the null and other keys
    python -m thematrix.evaluation control_use --model_dir MODEL --data_root GAME --index_file GAME/index.json \\
        --output control_use.json
    # 5. how many times faster one stream runs than another, both timed in turn in one process
    python -m thematrix.evaluation speed --model_dir STUDENT --sampler scm --num_inference_steps 4 \\
        --baseline_model_dir TEACHER --baseline_sampler swin-dpm --idm IDM \\
        --data_root HELDOUT --index_file HELDOUT/index.json --overlap_decode --output speed.json
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

from stage1.cogvideox.pipeline_cogvideox import default_device_and_dtype
from thematrix.acceleration import check_fp8
from thematrix.cli import run
from thematrix.config import ConfigError, first_given, setting_from_model
from thematrix.controls import VOCABULARY_FILE, ControlVocabulary, data_root_vocabulary
from thematrix.evaluation.control_use import DEFAULT_TIMESTEPS, KEY_SETS, control_use
from thematrix.evaluation.evaluate import (
    IdmData,
    Reference,
    build_idm,
    evaluate_clips,
    evaluate_streams,
    paired_speed,
)
from thematrix.evaluation.generation import (
    CLIPS_PER_BATCH,
    STREAM_DEFAULTS,
    STREAM_PIPELINES,
    StreamSetting,
    recorded_sampling,
)
from thematrix.evaluation.idm import IdmTraining
from thematrix.evaluation.report import contact_sheet, write_json
from thematrix.model_dir import DEFAULT_TEXT_GUIDANCE, check_model_dir, generation_defaults

DEFAULT_BIN_FRAMES = 100
DEFAULT_EDGE_FRAMES = 500
DEFAULT_MAX_FRAMES = 105  # 27 latent frames (an odd count decodes back to its length): a 100-frame bin per clip
# The paired speed: frames per timed stream (past the first chunk's start-up, most of a stream is steady state) and
# rounds, each timing both streams once (their median shrugs off a round that other work on the machine slowed).
DEFAULT_SPEED_FRAMES = 400
DEFAULT_SPEED_ROUNDS = 5
# Option prefixes of the paired speed's two streams: --model_dir ... and --baseline_model_dir ...
MEASURED_PREFIX = ""
BASELINE_PREFIX = "baseline_"
# The options of one stream setting beside its --model_dir (add_stream_setting's), as StreamSetting names them.
STREAM_SETTING_OPTIONS = ("sampler", "num_groups", "group_size", "num_inference_steps", "guidance_scale")


def footage_vocabulary(data_root: str | Path) -> ControlVocabulary:
    """The footage's vocabulary, from its ``vocabulary.json``: the IDM learns these tokens."""
    vocabulary = data_root_vocabulary(data_root)
    if vocabulary is None:
        raise FileNotFoundError(
            f"--data_root {data_root}: no {VOCABULARY_FILE}; the IDM needs the footage's control vocabulary "
            "(the recorders write it; see data/README.md)"
        )
    return vocabulary


def add_sampling(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--prompt",
        default=None,
        help='text prompt of every video, "" for the empty one (default: the model\'s, from its '
        "generation_defaults.json)",
    )
    group.add_argument("--control_guidance_scale", type=float, default=1.0)
    group.add_argument("--seed", type=int, default=0, help="video i uses seed + i (noise and commands)")


def add_outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_dir", required=True, help="a model directory of any stage")
    parser.add_argument("--idm", required=True, help="output_dir of `python -m thematrix.evaluation idm`")
    parser.add_argument("--output", type=Path, required=True, help="JSON file of the measures")
    parser.add_argument("--contact_sheet", type=Path, default=None, help="PNG of frames of the first videos")


def add_stream_setting(parser: argparse.ArgumentParser, prefix: str = MEASURED_PREFIX) -> None:
    """How one stream samples: ``--{prefix}sampler``, its window and steps, which ``resolve_stream_settings``
    completes from the model's record and the sampler's defaults."""
    parser.add_argument(
        f"--{prefix}sampler",
        default=None,
        choices=sorted(STREAM_PIPELINES),
        help="swin-dpm: stage 3's stream; scm: stage 4's few-step stream (default: the one the model records)",
    )
    parser.add_argument(
        f"--{prefix}num_groups", type=int, default=None, help="G (default: the window the model records)"
    )
    parser.add_argument(
        f"--{prefix}group_size", type=int, default=None, help="W (default: the window the model records)"
    )
    parser.add_argument(
        f"--{prefix}num_inference_steps", type=int, default=None, help="default: the sampler's (20; G for scm)"
    )
    parser.add_argument(
        f"--{prefix}guidance_scale",
        type=float,
        default=None,
        help="default: the model's record (1, no guidance, where its run dropped every caption), else the sampler's ("
        + "; ".join(f"{defaults['guidance_scale']:g} for {name}" for name, defaults in STREAM_DEFAULTS.items())
        + ")",
    )


def add_stream_starts(parser: argparse.ArgumentParser) -> None:
    """The real clips streams start from, and how their groups are decoded."""
    parser.add_argument("--data_root", required=True, help="real clips the streams start from")
    parser.add_argument("--index_file", required=True)
    parser.add_argument(
        "--overlap_decode",
        action="store_true",
        help="decode each group while the next group's forwards run (inference.py's --overlap_decode): the same "
        "frames, faster on a GPU; for the speed of the stream as a player would run it",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the transformer's blocks and the VAE (inference.py's --compile): the fast path a player runs; "
        "the first stream pays the compilation",
    )
    parser.add_argument(
        "--fp8",
        action="store_true",
        help="the blocks' attention and feed-forward matmuls in FP8 (inference.py's --fp8; torchao, GPUs with FP8 "
        "tensor cores): what the lower precision does to control following and domain fit",
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m thematrix.evaluation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    idm = commands.add_parser("idm", help="train the inverse-dynamics model; measure it and the real footage")
    idm.add_argument("--model_dir", required=True, help="a model directory: its VAE reconstructs the real clips")
    for name in ("data_root", "index_file", "heldout_data_root", "heldout_index_file"):
        idm.add_argument(f"--{name}", required=True)
    idm.add_argument("--fps", type=float, required=True, help="frame rate the stages train at")
    idm.add_argument(
        "--max_frames",
        type=int,
        default=DEFAULT_MAX_FRAMES,
        help="frames read per clip at most (clips are cut to 4k+1 frames with an odd number of latent frames)",
    )
    idm.add_argument("--bin_frames", type=int, default=DEFAULT_BIN_FRAMES, help="frames per bin of real footage")
    drift = idm.add_argument_group(
        "drift reference",
        "real footage played as the streams are (random keys held for a while, episodes as long as --drift_max_frames): "
        "its bins' spread is what a stream's bins are judged by (default: the held-out clips', whose player may play "
        "otherwise than the streams' random keys do, and whose clips may be short)",
    )
    drift.add_argument("--drift_data_root", default=None)
    drift.add_argument("--drift_index_file", default=None)
    drift.add_argument(
        "--drift_max_frames", type=int, default=None, help="frames read per drift clip at most (default: --max_frames)"
    )
    idm.add_argument(
        "--ignored_box",
        type=int,
        nargs=4,
        default=(),
        metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
        help="pixel edges of a screen region the IDM does not read (e.g. a display of the pressed keys), so that "
        "it reads the keys from the scene's motion; in the frames of the model's native size",
    )
    idm.add_argument("--output_dir", type=Path, required=True)
    training = idm.add_argument_group("training")
    for setting in fields(IdmTraining):
        if isinstance(setting.default, bool):
            training.add_argument(f"--{setting.name}", action=argparse.BooleanOptionalAction, default=setting.default)
        else:
            training.add_argument(f"--{setting.name}", type=type(setting.default), default=setting.default)

    clips = commands.add_parser("clips", help="clips under random commands: control following, domain fit")
    add_outputs(clips)
    clips.add_argument("--num_clips", type=int, default=32)
    clips.add_argument("--num_latent_frames", type=int, default=None, help="default: the model's native clip")
    clips.add_argument("--num_inference_steps", type=int, default=50)
    clips.add_argument(
        "--batch_size",
        type=int,
        default=CLIPS_PER_BATCH,
        help="clips sampled together (each draws the noise it would alone; more take more memory)",
    )
    clips.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="default: the model's record (1, no guidance, where its run dropped every caption), else CogVideoX's "
        f"{DEFAULT_TEXT_GUIDANCE:g}",
    )
    add_sampling(clips)

    stream = commands.add_parser("stream", help="streams from real clips: control following, drift, speed")
    add_outputs(stream)
    add_stream_setting(stream)
    add_stream_starts(stream)
    stream.add_argument("--num_streams", type=int, default=4)
    stream.add_argument("--num_frames", type=int, default=2000, help="frames per stream (at least)")
    stream.add_argument("--bin_frames", type=int, default=DEFAULT_BIN_FRAMES, help="frames per drift bin")
    stream.add_argument(
        "--edge_frames",
        type=int,
        default=DEFAULT_EDGE_FRAMES,
        help="the first and the last this many frames are compared (control following over time)",
    )
    stream.add_argument(
        "--gpus",
        type=gpu_ids,
        default=None,
        help="comma-separated GPU ids, e.g. 0,1,2,3: the streams split over them, one process a GPU (--part), then "
        "gathered into one measure. Each stream's speed is measured on its GPU while the others run: compare the "
        "speeds of evaluations run alike",
    )
    stream.add_argument(
        "--part",
        type=part_of,
        default=None,
        metavar="K/N",
        help="make only the streams K, K+N, K+2N, ... (counting from 0) and keep them in the records folder, writing "
        "no measures: one of N processes or machines sharing that folder; the same command without --part gathers "
        "them (making any still missing)",
    )
    add_sampling(stream)
    speed = commands.add_parser(
        "speed",
        help="how many times faster one stream runs than a baseline stream: both timed in turn, in one process",
        description="Both streams' pipelines load in this process; each makes one untimed stream, then every round "
        "times both from the same real clip and seed, the first of them alternating. Speeds measured in separate "
        "runs drift with the machine's other work; the ratio of speeds measured alike holds.",
    )
    for prefix, role in ((MEASURED_PREFIX, "the measured stream"), (BASELINE_PREFIX, "the baseline stream")):
        setting = speed.add_argument_group(role)
        setting.add_argument(f"--{prefix}model_dir", required=True, help="a model directory of stage 3 or 4")
        add_stream_setting(setting, prefix)
    speed.add_argument(
        "--idm",
        required=True,
        help="output_dir of `python -m thematrix.evaluation idm`: the frame rate the real clips are read at, the keys "
        "commanded",
    )
    add_stream_starts(speed)
    speed.add_argument(
        "--num_frames", type=int, default=DEFAULT_SPEED_FRAMES, help="frames per timed stream (at least)"
    )
    speed.add_argument("--rounds", type=int, default=DEFAULT_SPEED_ROUNDS, help="rounds, each timing both streams once")
    speed.add_argument("--output", type=Path, required=True, help="JSON file of the measures")
    add_sampling(speed)
    use = commands.add_parser(
        "control_use", help="denoising error with the clips' own keys, the null key and other keys, per noise level"
    )
    use.add_argument("--model_dir", required=True, help="a model directory with controls (stage 2 or later)")
    use.add_argument("--data_root", required=True, help="real clips with their keys (e.g. the training footage)")
    use.add_argument("--index_file", required=True)
    use.add_argument("--num_clips", type=int, default=16)
    use.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS))
    use.add_argument("--seed", type=int, default=0, help="which clips, and the noise")
    use.add_argument("--fps", type=float, default=None, help="frame rate to read at (default: the model's record)")
    use.add_argument("--batch_size", type=int, default=4, help="clips per transformer forward")
    use.add_argument("--output", type=Path, required=True, help="JSON file of the measures")
    return parser.parse_args(argv)


def gpu_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: GPU ids separated by commas, e.g. 0,1,2,3") from None
    if len(set(ids)) != len(ids) or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: each GPU id once, none negative")
    return ids


def part_of(text: str) -> tuple[int, int]:
    try:
        part, parts = (int(number) for number in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: K/N, e.g. 0/4 for the first of 4 parts") from None
    if not 0 <= part < parts:
        raise argparse.ArgumentTypeError(f"{text!r}: K counts the N parts from 0, so 0 <= K < N")
    return part, parts


def make_parts_on_gpus(argv: list[str], gpus: list[int]) -> None:
    """Run the stream evaluation ``argv`` (less its --gpus) once per GPU, each process on its GPU making its
    ``--part`` of the streams; they keep them in the shared records folder, which this process then gathers."""
    available = torch.cuda.device_count()
    if max(gpus) >= available:
        there = f"GPUs 0 to {available - 1}" if available else "no CUDA GPU"
        raise ConfigError(f"--gpus {','.join(map(str, gpus))}: this machine has {there}")
    # Ids count the GPUs this process sees: map them through CUDA_VISIBLE_DEVICES where it is set.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = visible.split(",") if visible else [str(gpu) for gpu in range(available)]
    arguments = [
        argument
        for index, argument in enumerate(argv)
        if not (argument == "--gpus" or argument.startswith("--gpus=") or (index and argv[index - 1] == "--gpus"))
    ]
    # Each process's CPU threads get its share of the cores, as torchrun gives its workers: a process's every
    # thread pool sized to the whole machine spins against the others' and delays the thread launching its kernels.
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, len(os.sched_getaffinity(0)) // len(gpus)))
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "thematrix.evaluation", *arguments, "--part", f"{part}/{len(gpus)}"],
            env={**os.environ, "CUDA_VISIBLE_DEVICES": names[gpu], "OMP_NUM_THREADS": threads},
        )
        for part, gpu in enumerate(gpus)
    ]
    codes = [(gpu, process.wait()) for gpu, process in zip(gpus, processes)]
    failed = [(gpu, code) for gpu, code in codes if code != 0]
    if failed:
        raise RuntimeError(
            "--gpus: "
            + ", ".join(f"the process on GPU {gpu} exited with code {code}" for gpu, code in failed)
            + " (its output is above); run the same command again: the streams finished are kept"
        )


def records_folder(output: Path) -> Path:
    """Where a stream evaluation keeps its finished streams: beside its JSON, ``stream.json`` -> ``stream.streams``."""
    return output.with_suffix(".streams")


def resolve_stream_settings(args: argparse.Namespace, prefix: str = MEASURED_PREFIX) -> StreamSetting:
    """Fill the window of the stream that the options ``--{prefix}...`` set from its model's record (a stream in
    another window than the model trained in measures a model that does not exist), then the sampler's defaults
    (its guidance where the model records none), in ``args`` (so that the measures record them) and in the setting
    returned. The sampler too, where not given: the one the model's window was trained for."""

    def option(name: str) -> str:
        return f"--{prefix}{name}"

    def given(name: str):
        return getattr(args, prefix + name)

    model_dir = check_model_dir(given("model_dir"), option("model_dir"))
    recorded = generation_defaults(model_dir)
    for name in ("num_groups", "group_size"):
        value = setting_from_model(option(name), given(name), getattr(recorded, name), f"the model at {model_dir}")
        if value is None:
            raise ConfigError(
                f"{option(name)}: the model at {model_dir} records no Swin-DPM window (a model of stage 3 or 4 "
                f"does); pass {option(name)} as it was trained"
            )
        setattr(args, prefix + name, value)
    if given("sampler") is None:
        if recorded.sampler is None:
            raise ConfigError(
                f"{option('sampler')}: the model at {model_dir} records no sampler (a model written before its "
                f"record named one); pass {option('sampler')} swin-dpm for a stage-3 model, scm for a stage-4 one"
            )
        setattr(args, prefix + "sampler", recorded.sampler)
    defaults = STREAM_DEFAULTS[given("sampler")]
    steps = given("num_inference_steps") or defaults["num_inference_steps"] or given("num_groups")
    setattr(args, prefix + "num_inference_steps", steps)
    guidance = first_given(given("guidance_scale"), recorded.guidance_scale, defaults["guidance_scale"])
    setattr(args, prefix + "guidance_scale", guidance)
    return StreamSetting(str(model_dir), **{name: given(name) for name in STREAM_SETTING_OPTIONS})


def resolve_recorded_sampling(args: argparse.Namespace) -> None:
    """Where not given, the prompt ``--model_dir`` records (the empty caption for a run that dropped every
    caption) and, for clips, its text guidance, else CogVideoX's (a stream's guidance is its setting's:
    ``resolve_stream_settings``); in ``args``, so that the measures record what the videos were sampled with."""
    args.prompt, guidance_scale = recorded_sampling(args.model_dir, args.prompt, args.guidance_scale)
    if args.command == "clips":
        args.guidance_scale = guidance_scale


def check_speed_sizes(args: argparse.Namespace) -> None:
    """Refuse a paired speed with nothing to time, before any model loads."""
    if args.rounds < 1:
        raise ConfigError(
            f"--rounds {args.rounds}: the paired speed times both streams once a round; pass --rounds 1 or more "
            f"(default {DEFAULT_SPEED_ROUNDS})"
        )
    if args.num_frames < 1:
        raise ConfigError(
            f"--num_frames {args.num_frames}: a timed stream needs frames past its start; pass --num_frames 1 or "
            f"more (default {DEFAULT_SPEED_FRAMES})"
        )


def main(argv=None) -> Path | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.command == "stream":
        resolve_stream_settings(args)
        if args.gpus and args.part:
            raise ConfigError("--gpus runs every --part itself: pass one of them")
    if args.command == "speed":
        check_speed_sizes(args)
        measured, baseline = (resolve_stream_settings(args, prefix) for prefix in (MEASURED_PREFIX, BASELINE_PREFIX))
    if args.command in ("stream", "speed") and args.fp8:
        check_fp8("--fp8", default_device_and_dtype()[0])
    if args.command in ("clips", "stream", "speed"):
        resolve_recorded_sampling(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    start = time.perf_counter()
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    if args.command == "idm":
        if (args.drift_data_root is None) != (args.drift_index_file is None):
            raise ConfigError("--drift_data_root and --drift_index_file go together: pass both, or neither")
        data = IdmData(
            args.data_root,
            args.index_file,
            args.heldout_data_root,
            args.heldout_index_file,
            args.fps,
            args.max_frames,
            args.drift_data_root,
            args.drift_index_file,
            args.drift_max_frames,
        )
        training = IdmTraining(**{setting.name: getattr(args, setting.name) for setting in fields(IdmTraining)})
        measures = build_idm(
            args.model_dir,
            footage_vocabulary(args.data_root),
            data,
            training,
            args.output_dir,
            args.bin_frames,
            ignored_box=args.ignored_box,
        )
        output = write_json(args.output_dir / "idm.json", measures, settings, time.perf_counter() - start)
        print(
            f"IDM held-out accuracy {measures['idm']['accuracy']:.3f} (chance: uniform {measures['chance']['uniform']:.3f}, "
            f"majority {measures['chance']['majority']:.3f}); IDM and reference: {args.output_dir.resolve()}"
        )
        return output
    if args.command == "control_use":
        measures = control_use(
            args.model_dir,
            args.data_root,
            args.index_file,
            num_clips=args.num_clips,
            timesteps=tuple(args.timesteps),
            seed=args.seed,
            fps=args.fps,
            batch_size=args.batch_size,
        )
        output = write_json(args.output, measures, settings, time.perf_counter() - start)
        errors = measures["x0_mse"]
        print(f"x0 error on {measures['clips']} clips, by timestep: " + ", ".join(KEY_SETS))
        for index, timestep in enumerate(measures["timesteps"]):
            print(f"  t={timestep:4d}  " + "  ".join(f"{errors[name][index]:.5f}" for name in KEY_SETS))
        print(f"measures: {output.resolve()}")
        return output
    reference = Reference.load(args.idm)
    if args.command == "speed":
        measures = paired_speed(
            measured,
            baseline,
            reference,
            data_root=args.data_root,
            index_file=args.index_file,
            prompt=args.prompt,
            num_frames=args.num_frames,
            rounds=args.rounds,
            control_guidance_scale=args.control_guidance_scale,
            seed=args.seed,
            overlap_decode=args.overlap_decode,
            compiled=args.compile,
            fp8=args.fp8,
        )
        output = write_json(args.output, measures, settings, time.perf_counter() - start)
        ratio = measures["frames_per_second_ratio"]
        print(
            f"measured / baseline frames per second: {ratio['median_of_rounds']:.2f}x, the median of {args.rounds} "
            f"rounds' ratios ({ratio['per_round_min']:.2f}x to {ratio['per_round_max']:.2f}x; the ratio of the "
            f"medians {ratio['of_medians']:.2f}x); measures: {output.resolve()}"
        )
        return output
    sampling = dict(
        prompt=args.prompt,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        control_guidance_scale=args.control_guidance_scale,
        seed=args.seed,
    )
    if args.command == "clips":
        measures, sheet_rows = evaluate_clips(
            args.model_dir,
            reference,
            num_clips=args.num_clips,
            num_latent_frames=args.num_latent_frames,
            batch_size=args.batch_size,
            **sampling,
        )
    else:
        if args.gpus:
            make_parts_on_gpus(argv, args.gpus)
        measures, sheet_rows = evaluate_streams(
            args.model_dir,
            args.sampler,
            reference,
            data_root=args.data_root,
            index_file=args.index_file,
            num_streams=args.num_streams,
            num_frames=args.num_frames,
            num_groups=args.num_groups,
            group_size=args.group_size,
            bin_frames=args.bin_frames,
            edge_frames=args.edge_frames,
            overlap_decode=args.overlap_decode,
            compiled=args.compile,
            fp8=args.fp8,
            records_dir=records_folder(args.output),
            part=args.part,
            **sampling,
        )
        if measures is None:
            print(f"streams of part {args.part[0]}/{args.part[1]} kept in {records_folder(args.output).resolve()}")
            return None
    output = write_json(args.output, measures, settings, time.perf_counter() - start)
    if args.contact_sheet is not None:
        contact_sheet(sheet_rows, args.contact_sheet)
    following = measures["control_following"]
    print(
        f"control following {following['accuracy']:.3f} (the IDM's real-footage ceiling {following['real_ceiling']:.3f}, "
        f"chance {following['chance']['uniform']:.3f}), colour distance {measures['domain_fit']['total_variation']:.3f}; "
        f"measures: {output.resolve()}"
    )
    return output


if __name__ == "__main__":
    run(main)
