"""Streaming speed at full CogVideoX-2B size (random weights): Swin-DPM (stage 3) and few-step (stage 4), eager and
with the fast paths (thematrix/acceleration.py), beside stock diffusers in the same process.

    python bench/bench_stream.py --height 480 --width 720 --json stream.json
    python bench/bench_stream.py --rows scm_4_steps_compiled --json relaunch.json  # a second launch: cached compile
    # where each row's time goes: device time by kind of work, host operator calls, the top kernels; traces
    python bench/bench_stream.py --rows scm_4_steps_compiled_overlap --profile --profile_dir traces --json profile.json
    # 2 GPUs: the decoder on cuda:1, beside the same sampling on one GPU
    python bench/bench_stream.py --rows scm_4_steps scm_4_steps_compiled_overlap scm_4_steps_compiled_decode_on_cuda_1 \
        swin_dpm_20_steps_cfg swin_dpm_20_steps_cfg_compiled_overlap swin_dpm_20_steps_cfg_compiled_decode_on_cuda_1 \
        --json two_gpus.json
    # N GPUs, one forward split over them (context parallelism), beside the same rows on each GPU alone
    torchrun --nproc_per_node 2 bench/bench_stream.py --rows scm_4_steps scm_4_steps_compiled \
        scm_4_steps_compiled_context_parallel swin_dpm_20_steps_cfg swin_dpm_20_steps_cfg_compiled \
        swin_dpm_20_steps_cfg_compiled_context_parallel --json context_parallel.json
    # N + 1 GPUs: the forward split over cuda:0 to cuda:N-1, rank 0 decoding on cuda:N (e.g. 2 + 1, or 3 + 1 on 4)
    torchrun --nproc_per_node 3 bench/bench_stream.py --rows scm_4_steps scm_4_steps_compiled \
        scm_4_steps_compiled_context_parallel scm_4_steps_compiled_context_parallel_decode_on_cuda_N \
        --json context_parallel_decode.json

Each row streams from a random clip one window long, with a window of G groups of W latent frames (16 video frames
a group for W = 4), and reports: time to first frame; frames per second after the first group; control-to-screen
latency, the time from asking a group's controls (when it enters the window) to showing its first frame, averaged
over the groups that entered after the start; and, for the fast paths, the error of the latents and the PSNR of the
frames against the eager row of the same sampling (one GPU). Rows named ``decode_on_cuda_1`` need a second GPU:
the VAE decodes there (``--decode_device cuda:1``) while the first GPU runs the transformer. Rows named
``context_parallel`` run under ``torchrun --nproc_per_node N`` (any N thematrix/parallel.py takes: 2, 3, 4, 5, 6 or 8
on an 8-GPU machine): they run after the others of the launch, which are their references; rank 0 decodes and
records, and in the rows named ``decode_on_cuda_N`` it decodes on the GPU after the N ranks' (N + 1 GPUs). Baseline: stock ``CogVideoXPipeline`` generating 49 frames with
the same number of steps and guidance, its frames per second being frames over wall time. The JSON is rewritten
after every row, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_train_step import BENCH_VOCABULARY, recipe_interactive
from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

from stage3.cogvideox.pipeline_cogvideox import NO_DECODER_DEVICE, SwinDPMPipeline, window_clip_frames
from stage4.cogvideox.pipeline_cogvideox import ScmPipeline
from stage4.cogvideox.scheduler import ScmScheduler
from thematrix import profiling
from thematrix.acceleration import (
    check_device,
    check_fp8,
    compile_stream,
    compile_stream_blocks,
    error_against,
    quantize_fp8,
)
from thematrix.base_model import build_base_model
from thematrix.config import ConfigError
from thematrix.controls import default_control_pattern
from thematrix.model_dir import load_components
from thematrix.models import InteractiveCogVideoXTransformer3DModel
from thematrix.parallel import (
    WORLD_SIZE_VARIABLE,
    check_context_parallel,
    enable_context_parallel,
    init_context_parallel_process,
    is_main_process,
)
from thematrix.presets import PRESETS

STOCK_FRAMES = 49
CONTROL_PATTERN = default_control_pattern(BENCH_VOCABULARY)
PROMPT = "A game world seen from above, the player moving through it."
# Groups emitted after the window's first G, whose controls were asked mid-stream: the latency's samples.
LATENCY_GROUPS = 3
# The pipeline's steps before the first group's forwards, timed apart in the time to the first frame.
FIRST_FRAME_PARTS = ("encode_text", "encode_window")
SECOND_GPU = "cuda:1"  # the decode device of the 2-GPU rows
# Row settings that change the shared modules in place: once a row turns one on, it stays on for the later rows.
STICKY_SETTINGS = ("compiled", "fp8")


@dataclass(frozen=True)
class Row:
    name: str
    sampler: str  # "swin-dpm" or "scm"
    steps: int
    guidance: float
    num_groups: int = 4
    group_size: int = 4
    compiled: bool = False
    overlap_decode: bool = False
    fp8: bool = False  # the blocks' matmuls in FP8 (thematrix.acceleration.quantize_fp8)
    decode_device: str | None = None  # the VAE's device (place_decoder), None: the transformer's
    context_parallel: bool = False  # the forward split over torchrun's processes (thematrix/parallel.py)
    # With context_parallel: rank 0's VAE on cuda:N, the GPU after the N ranks' (the decode device outside the group)
    decode_outside_group: bool = False
    reference: str | None = None  # the eager row whose output this one should reproduce
    # A first, unmeasured stream compiles the window's shapes, so no compilation lands inside the measures.
    warm_up: bool = False

    @property
    def max_groups(self) -> int:
        """Swin-DPM rows emit 4 groups (speed only); few-step rows G + LATENCY_GROUPS (speed and latency)."""
        return 4 if self.sampler == "swin-dpm" else self.num_groups + LATENCY_GROUPS


ROWS = [
    Row("swin_dpm_20_steps", "swin-dpm", 20, 1.0),
    Row("swin_dpm_20_steps_cfg", "swin-dpm", 20, 6.0),
    Row("scm_4_steps", "scm", 4, 1.0),
    Row("scm_4_steps_cfg", "scm", 4, 6.0),
    # 2 GPUs, eager: the VAE on cuda:1 (rows below say how), a two-GPU number that needs no compilation.
    Row("scm_4_steps_decode_on_cuda_1", "scm", 4, 1.0, decode_device=SECOND_GPU, reference="scm_4_steps"),
    # The first compiled row pays the compilation (cold start); the next ones run compiled.
    Row("scm_4_steps_compiled", "scm", 4, 1.0, compiled=True, reference="scm_4_steps"),
    Row("scm_4_steps_compiled_again", "scm", 4, 1.0, compiled=True, reference="scm_4_steps"),
    Row("scm_4_steps_compiled_overlap", "scm", 4, 1.0, compiled=True, overlap_decode=True, reference="scm_4_steps"),
    Row("swin_dpm_20_steps_cfg_compiled", "swin-dpm", 20, 6.0, compiled=True, reference="swin_dpm_20_steps_cfg"),
    Row(
        "swin_dpm_20_steps_cfg_compiled_overlap",
        "swin-dpm",
        20,
        6.0,
        compiled=True,
        overlap_decode=True,
        reference="swin_dpm_20_steps_cfg",
    ),
    Row(
        "swin_dpm_20_steps_compiled_overlap",
        "swin-dpm",
        20,
        1.0,
        compiled=True,
        overlap_decode=True,
        reference="swin_dpm_20_steps",
        warm_up=True,
    ),
    # 2 GPUs: the VAE on a second GPU decodes each group while the first runs the next group's forwards (the
    # overlapped order); beside the one-GPU overlapped rows above. The warm-up compiles the decoder for cuda:1.
    Row(
        "scm_4_steps_compiled_decode_on_cuda_1",
        "scm",
        4,
        1.0,
        compiled=True,
        decode_device=SECOND_GPU,
        reference="scm_4_steps",
        warm_up=True,
    ),
    Row(
        "swin_dpm_20_steps_cfg_compiled_decode_on_cuda_1",
        "swin-dpm",
        20,
        6.0,
        compiled=True,
        decode_device=SECOND_GPU,
        reference="swin_dpm_20_steps_cfg",
        warm_up=True,
    ),
    # Smaller windows: shorter latency (fewer groups between entering and leaving), cheaper forwards.
    Row("scm_2x4_compiled", "scm", 2, 1.0, num_groups=2, group_size=4, compiled=True, warm_up=True),
    Row("scm_2x4_compiled_overlap", "scm", 2, 1.0, num_groups=2, group_size=4, compiled=True, overlap_decode=True),
    Row("scm_2x2_compiled", "scm", 2, 1.0, num_groups=2, group_size=2, compiled=True, warm_up=True),
    Row("scm_2x2_compiled_overlap", "scm", 2, 1.0, num_groups=2, group_size=2, compiled=True, overlap_decode=True),
    # FP8 matmuls (GPUs with FP8 tensor cores), beside the compiled overlapped rows above; the warm-up recompiles the
    # blocks for the FP8 weights.
    Row(
        "scm_4_steps_compiled_overlap_fp8",
        "scm",
        4,
        1.0,
        compiled=True,
        overlap_decode=True,
        fp8=True,
        reference="scm_4_steps",
        warm_up=True,
    ),
    Row(
        "swin_dpm_20_steps_compiled_overlap_fp8",
        "swin-dpm",
        20,
        1.0,
        compiled=True,
        overlap_decode=True,
        fp8=True,
        reference="swin_dpm_20_steps",
    ),
    # N GPUs under torchrun --nproc_per_node N: each forward's tokens split over them (Ulysses attention). The rows
    # without it run first in the same launch, on every GPU alone, as their reference.
    Row("scm_4_steps_context_parallel", "scm", 4, 1.0, context_parallel=True, reference="scm_4_steps"),
    Row(
        "scm_4_steps_compiled_context_parallel",
        "scm",
        4,
        1.0,
        compiled=True,
        context_parallel=True,
        reference="scm_4_steps",
        warm_up=True,
    ),
    # Two GPUs' best guess: rank 0 decodes each group on a second CUDA stream of its own GPU while every rank runs
    # the next group's forwards (no third GPU needed).
    Row(
        "scm_4_steps_compiled_overlap_context_parallel",
        "scm",
        4,
        1.0,
        compiled=True,
        overlap_decode=True,
        context_parallel=True,
        reference="scm_4_steps",
        warm_up=True,
    ),
    Row(
        "swin_dpm_20_steps_cfg_compiled_context_parallel",
        "swin-dpm",
        20,
        6.0,
        compiled=True,
        context_parallel=True,
        reference="swin_dpm_20_steps_cfg",
        warm_up=True,
    ),
    # N + 1 GPUs: the N ranks' forwards, rank 0 decoding each group on cuda:N meanwhile.
    Row(
        "scm_4_steps_compiled_context_parallel_decode_on_cuda_N",
        "scm",
        4,
        1.0,
        compiled=True,
        context_parallel=True,
        decode_outside_group=True,
        reference="scm_4_steps",
        warm_up=True,
    ),
    Row(
        "swin_dpm_20_steps_cfg_compiled_context_parallel_decode_on_cuda_N",
        "swin-dpm",
        20,
        6.0,
        compiled=True,
        context_parallel=True,
        decode_outside_group=True,
        reference="swin_dpm_20_steps_cfg",
        warm_up=True,
    ),
]
STOCK_ROWS = [("stock_20_steps", 20, 1.0), ("stock_20_steps_cfg", 20, 6.0)]


def stream_row(pipeline: SwinDPMPipeline, row: Row, cli) -> tuple[dict, torch.Tensor, torch.Tensor] | None:
    """One stream's measures, its frames and its latents (on the CPU); None on a context-parallel rank other than 0,
    which runs the forwards and has no frames to measure."""
    initial_video = torch.rand(
        window_clip_frames(pipeline.vae, row.num_groups, row.group_size),
        3,
        cli.height,
        cli.width,
        generator=torch.Generator().manual_seed(0),
    )
    asked: dict[int, float] = {}

    def controls(group: int) -> list[str]:
        asked[group] = time.perf_counter()
        return [CONTROL_PATTERN[(group * row.group_size + k) % len(CONTROL_PATTERN)] for k in range(row.group_size)]

    generator = torch.Generator(device=pipeline.device).manual_seed(0)
    on_gpu = pipeline.device.type == "cuda"
    first_frame_parts = time_calls(pipeline, FIRST_FRAME_PARTS)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(pipeline.device)
    synchronize(pipeline)
    start = time.perf_counter()
    shown, frames, latents = {}, [], []
    stream = pipeline.stream(
        prompt=PROMPT,
        initial_video=initial_video * 2 - 1,
        controls=controls,
        num_groups=row.num_groups,
        group_size=row.group_size,
        num_inference_steps=row.steps,
        guidance_scale=row.guidance,
        generator=generator,
        max_groups=row.max_groups,
        overlap_decode=row.overlap_decode,
    )
    if not pipeline.decodes:
        for _ in stream:
            pass
        return None
    for chunk in stream:
        shown[chunk.group_index] = time.perf_counter()
        frames.append(chunk.frames)
        latents.append(chunk.latents)
    arrivals = [shown[group] - start for group in sorted(shown)]
    steady_frames = sum(len(chunk) for chunk in frames[1:])
    mid_stream = [group for group in shown if group >= row.num_groups]
    measures = {
        "steps": row.steps,
        "guidance_scale": row.guidance,
        "window": f"{row.num_groups}x{row.group_size}",
        "compiled": row.compiled,
        "overlap_decode": row.overlap_decode,
        "decode_device": str(pipeline.vae.device),
        "context_parallel": torch.distributed.get_world_size() if row.context_parallel else None,
        "groups": len(arrivals),
        "time_to_first_frame_s": arrivals[0],
        # Of which: the prompt's and the initial clip's encoding (the rest: the first group's forwards and decode).
        "time_to_first_frame_parts_s": first_frame_parts,
        "fps": steady_frames / (arrivals[-1] - arrivals[0]),
        "seconds_per_group": (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1),
        "control_to_screen_s": (
            sum(shown[group] - asked[group] for group in mid_stream) / len(mid_stream) if mid_stream else None
        ),
        "peak_gib": torch.cuda.max_memory_allocated(pipeline.device) / 2**30 if on_gpu else None,
    }
    return measures, torch.cat(frames), torch.cat(latents)


def profile_row(pipeline: SwinDPMPipeline, row: Row, cli) -> dict:
    """The row's stream once more under torch's profiler (after its measured run: profiling slows it): the device
    time by kind of work (GPU kernels; on the CPU, aten operators), the share of the wall time the device was busy
    (above 1 where two CUDA streams overlap, as the overlapped decode's do), the host's operator calls per group,
    and the top kernels. With ``--profile_dir``, the trace too, gzipped (Perfetto reads it)."""
    with torch.profiler.profile(activities=profiling.activities(pipeline.device)) as profiler:
        start = time.perf_counter()
        stream_row(pipeline, row, cli)
        wall = time.perf_counter() - start
    if cli.profile_dir:
        profiling.save_trace(profiler, Path(cli.profile_dir) / f"{row.name}.json")
    return profiling.summarize(profiler, wall, row.max_groups, "group", pipeline.device)


def time_calls(pipeline, names: tuple[str, ...]) -> dict[str, float]:
    """Wrap ``pipeline``'s methods ``names`` (this instance's, for one stream) so that each call adds its wall time,
    the GPU's work included, to the returned dict under the method's name."""
    times = dict.fromkeys(names, 0.0)

    def timed(name, method):
        def call(*args, **kwargs):
            synchronize(pipeline)
            start = time.perf_counter()
            result = method(*args, **kwargs)
            synchronize(pipeline)
            times[name] += time.perf_counter() - start
            return result

        return call

    for name in names:
        setattr(pipeline, name, timed(name, getattr(type(pipeline), name).__get__(pipeline)))
    return times


def synchronize(pipeline) -> None:
    for device in {pipeline.vae.device, pipeline.device} - {NO_DECODER_DEVICE}:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def base_model_dir(cli) -> Path:
    """``--model_dir``, or the random 2B base model in ``--work_dir`` (built there once). Under torchrun rank 0
    builds it while the others wait, so that none reads a model half written."""
    model_dir = cli.model_dir or Path(cli.work_dir or tempfile.mkdtemp(prefix="bench-")) / "base-2b"
    if is_main_process() and not (model_dir / "model_index.json").is_file():
        build_base_model("cogvideox-2b", model_dir, seed=0, dtype=torch.bfloat16, device=cli.device)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return model_dir


def interactive_transformer(model_dir: Path) -> InteractiveCogVideoXTransformer3DModel:
    """The base model's transformer with a random Interactive Module (``recipe_interactive``), in bf16."""
    base = CogVideoXTransformer3DModel.from_pretrained(model_dir, subfolder="transformer", dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(len(BENCH_VOCABULARY) + 1, base.config.text_embed_dim, generator=generator)
    torch.manual_seed(0)
    return recipe_interactive(base, table).to(torch.bfloat16)


def split_counts(cli) -> dict[str, int]:
    """What context parallelism splits at CogVideoX-2B size: heads, text tokens and each latent frame's tokens."""
    preset = PRESETS["cogvideox-2b"]
    config = preset["transformer"]
    patch = config["patch_size"] * 2 ** (len(preset["vae"]["block_out_channels"]) - 1)
    return {
        "heads": config["num_attention_heads"],
        "text_tokens": config["max_text_seq_length"],
        "frame_tokens": (cli.height // patch) * (cli.width // patch),
    }


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--work_dir", default=None, help="keeps the built 2B model between runs")
    parser.add_argument(
        "--model_dir",
        type=Path,
        default=None,
        help="a base model directory instead of the random 2B one (e.g. a tiny one, to check the script on the CPU)",
    )
    parser.add_argument("--device", default="cuda", help="cuda; cpu only checks the script")


def stock_speed(model_dir: Path, steps: int, guidance: float, cli) -> dict:
    pipeline = CogVideoXPipeline.from_pretrained(str(model_dir), dtype=torch.bfloat16).to("cuda")
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.synchronize()
    start = time.perf_counter()
    pipeline(
        prompt=PROMPT,
        num_frames=STOCK_FRAMES,
        height=cli.height,
        width=cli.width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator,
        output_type="pt",
    )
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    del pipeline
    torch.cuda.empty_cache()
    return {"steps": steps, "guidance_scale": guidance, "frames": STOCK_FRAMES, "seconds": elapsed,
            "fps": STOCK_FRAMES / elapsed}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--rows", nargs="+", default=None, help="names of the rows to run (default: stock, then all)")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--profile", action="store_true", help="stream each row once more under torch's profiler (see profile_row)"
    )
    parser.add_argument("--profile_dir", default=None, help="with --profile: write each row's trace there")
    cli = parser.parse_args()
    # the package's own progress (e.g. which compiled graphs a launch loaded and which it compiled, and how long each
    # took); other libraries' at warnings only
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("thematrix").setLevel(logging.INFO)
    rows = [row for row in ROWS if cli.rows is None or row.name in cli.rows]
    unknown = set(cli.rows or ()) - {row.name for row in ROWS} - {name for name, _, _ in STOCK_ROWS}
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; known: {[row.name for row in ROWS]} and the stock rows")
    degree = int(os.environ.get(WORLD_SIZE_VARIABLE, "1"))
    decode_devices = {
        row.name: row.decode_device or f"cuda:{degree}" for row in rows if row.decode_device or row.decode_outside_group
    }
    for name, decode_device in decode_devices.items():
        try:
            check_device(f"--rows {name}: its decode device", decode_device)
        except ConfigError as error:
            parser.error(str(error))
    parallel = [row for row in rows if row.context_parallel]
    splits_evenly = True
    if parallel:
        if not (cli.work_dir or cli.model_dir):
            parser.error(f"--rows {parallel[0].name}: give --work_dir (or --model_dir), the model every rank reads")
        try:
            splits_evenly = check_context_parallel(degree, **split_counts(cli), window=f"{cli.height}x{cli.width}")
        except ConfigError as error:
            parser.error(f"--rows {parallel[0].name}: {error}")
        init_context_parallel_process()
        rows = [row for row in rows if not row.context_parallel] + parallel  # their references first
    # Compilation and FP8 stay on once a row turns them on (as context parallelism does, hence those rows last): a
    # row without one cannot follow a row with it.
    for earlier, later in zip(rows, rows[1:]):
        for setting in STICKY_SETTINGS:
            if getattr(earlier, setting) and not getattr(later, setting):
                parser.error(
                    f"--rows {later.name} runs without {setting} after {earlier.name} with it (rows run in the order "
                    "of bench_stream.py's ROWS, context-parallel rows last): measure it in a launch of its own"
                )
    fp8_rows = [row for row in rows if row.fp8]
    if fp8_rows:
        try:
            check_fp8(f"--rows {fp8_rows[0].name}", torch.device(cli.device))
        except ConfigError as error:
            parser.error(str(error))
    model_dir = base_model_dir(cli)
    on_gpu = cli.device == "cuda"

    results = {
        "device": torch.cuda.get_device_name() if on_gpu else cli.device,
        "size": f"{cli.height}x{cli.width}",
        "torch": torch.__version__,
    }

    def record(name: str, measures: dict) -> None:
        if not is_main_process():
            return
        results[name] = measures
        print(name, json.dumps(measures), flush=True)
        if cli.json:
            Path(cli.json).write_text(json.dumps(results, indent=2))

    # The baseline first, so that a run cut short still has it.
    for name, steps, guidance in STOCK_ROWS if on_gpu else ():
        if cli.rows is None or name in cli.rows:
            record(name, stock_speed(model_dir, steps, guidance, cli))
    components = load_components(model_dir, torch.bfloat16, SwinDPMPipeline.scheduler_class)
    transformer = interactive_transformer(model_dir)
    swin = SwinDPMPipeline(transformer=transformer, **components).to(cli.device)
    # Stage 4's pipeline on the same modules: speed does not depend on what the weights learned.
    scm = ScmPipeline(**dict(swin.components, scheduler=ScmScheduler.from_config(swin.scheduler.config)))
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    compiled = parallel_enabled = quantized = False
    for row in rows:
        if row.context_parallel and not parallel_enabled:
            # The compiled blocks recompile for the new attention processor (in the row's warm-up).
            enable_context_parallel(transformer, degree, splits_evenly)
            parallel_enabled = True
        if row.fp8 and not quantized:
            quantize_fp8(transformer)
            if compiled:
                compile_stream_blocks(transformer)  # recompiled with their kernels tuned, in the row's warm-up
            quantized = True
        if row.compiled and not compiled:
            compile_stream(swin)  # scm shares the modules
            compiled = True
        pipeline = swin if row.sampler == "swin-dpm" else scm
        # scm shares the VAE. The reference rows run on every rank alone (each encodes and decodes); in a
        # context-parallel row only rank 0 records, so only it keeps the VAE (context-parallel rows come last).
        drops_decoder = row.context_parallel and not is_main_process()
        pipeline.place_decoder(None if drops_decoder else decode_devices.get(row.name, pipeline.device))
        pipeline.set_progress_bar_config(disable=True)
        if row.warm_up:
            stream_row(pipeline, row, cli)
        measured = stream_row(pipeline, row, cli)
        if measured is None:
            continue
        measures, frames, latents = measured
        if row.reference in outputs:  # same sampling, window and groups: the same stream up to rounding
            measures["error_against_eager"] = error_against(frames, latents, outputs[row.reference])
        if not row.compiled:
            outputs[row.name] = (frames, latents)
        if cli.profile:
            measures["profile"] = profile_row(pipeline, row, cli)
        record(row.name, measures)


if __name__ == "__main__":
    main()
