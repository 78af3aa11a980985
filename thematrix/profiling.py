"""Where a run's time goes: a summary of torch's profiler over some units of work (training steps, stream groups).

The summary says how long the device was busy (GPU kernels; on the CPU, aten operators) by kind of work, the share
of the wall time that is (below 1: the device waited for the host or the data; above 1 where CUDA streams overlap),
how many operators the host called per unit (each costs the host microseconds, whatever its size: what bounds small
models), how many times per unit it waited for the GPU, and the top kernels. ``bench/bench_stream.py --profile`` and
training's ``args.profile_steps`` write it.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import time
from pathlib import Path

import torch

# Kernel and operator name fragments that say what a piece of device work does: the first kind whose fragment a name
# holds, else "other". Convolutions before matmuls: cuDNN names its convolution kernels implicit GEMMs.
WORK_KINDS = {
    "attention": ("flash", "fmha", "attention", "sdpa", "cudnn_sdpa"),
    "convolution": ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm", "cudnn"),
    "matmul": ("gemm", "matmul", "_mm", "mm_", "addmm", "cutlass", "linear", "scaled_mm", "xmma"),
    "copy": ("memcpy", "memset", "copy_", "to_copy"),
}
TOP_KERNELS = 12  # the kernels (operators) a summary lists by time, and the host operators by calls
# CUDA runtime calls in which the host waits for the GPU (torch's blocking copies from pageable memory end in one)
HOST_WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")

logger = logging.getLogger(__name__)


def work_kind(name: str) -> str:
    """The kind of work (``WORK_KINDS``) a kernel's or operator's name says it does."""
    lowered = name.lower()
    return next((kind for kind, patterns in WORK_KINDS.items() if any(p in lowered for p in patterns)), "other")


def activities(device: torch.device) -> list[torch.profiler.ProfilerActivity]:
    """What to record on ``device``: the host's operators, and the GPU's kernels on a GPU."""
    on_gpu = device.type == "cuda"
    return [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work, so that a wall clock read next includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(profiler: torch.profiler.profile, wall_s: float, units: int, unit: str, device: torch.device) -> dict:
    """The summary (module docstring) of a finished ``profiler`` that ran ``units`` ``unit``s on ``device`` in
    ``wall_s`` seconds."""
    averages = profiler.key_averages()
    operators = [event for event in averages if event.key.startswith("aten::")]
    if device.type == "cuda":
        kernels = [event for event in averages if event.device_type == torch.autograd.DeviceType.CUDA]
        work = [(event.key, event.self_device_time_total / 1e6, event.count) for event in kernels]
    else:
        work = [(event.key, event.self_cpu_time_total / 1e6, event.count) for event in operators]
    by_kind: dict[str, float] = {}
    for name, seconds, _ in work:
        kind = work_kind(name)
        by_kind[kind] = by_kind.get(kind, 0.0) + seconds
    return {
        "wall_s": wall_s,
        "device_s_by_kind": dict(sorted(by_kind.items(), key=lambda item: -item[1])),
        "device_busy_share": sum(by_kind.values()) / wall_s,
        f"host_operator_calls_per_{unit}": sum(event.count for event in operators) / units,
        # Each stops the host queueing work ahead of the GPU (thematrix/devices.py).
        f"host_waits_per_{unit}": sum(event.count for event in averages if event.key in HOST_WAITS) / units,
        "top": [
            {"name": name[:120], "seconds": seconds, "calls": calls}
            for name, seconds, calls in sorted(work, key=lambda item: -item[1])[:TOP_KERNELS]
        ],
        # Where the host's calls come from, when they bound the run.
        f"top_host_operators_per_{unit}": {
            event.key: event.count / units for event in sorted(operators, key=lambda e: -e.count)[:TOP_KERNELS]
        },
    }


def save_trace(profiler: torch.profiler.profile, path: Path) -> Path:
    """The profiler's trace as gzipped Chrome-trace JSON at ``path`` + ".gz" (a tenth of the size; Perfetto reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profiler.export_chrome_trace(str(path))
    packed = path.with_name(path.name + ".gz")
    with path.open("rb") as source, gzip.open(packed, "wb") as target:
        shutil.copyfileobj(source, target)
    path.unlink()
    return packed


class StepTrace:
    """A training run's steps ``start_step + 1`` to ``end_step`` under torch's profiler (``args.profile_steps``): the
    summary to ``<output_dir>/profile.json``, the trace beside it. A run that stops sooner writes the steps it traced.
    Call ``before_step(step)`` and ``after_step(step)`` around each step, ``step`` counting the steps done."""

    SUMMARY = "profile.json"
    TRACE = "profile_trace.json"

    def __init__(self, device: torch.device, output_dir: Path, start_step: int, end_step: int):
        self.device, self.output_dir = device, output_dir
        self.start_step, self.end_step = start_step, end_step
        self.profiler: torch.profiler.profile | None = None
        self.started = 0.0

    def before_step(self, step: int) -> None:
        if self.profiler is None and step == self.start_step:
            synchronize(self.device)
            self.profiler = torch.profiler.profile(activities=activities(self.device))
            self.profiler.__enter__()
            self.started = time.perf_counter()

    def after_step(self, step: int, last_step: int) -> None:
        if self.profiler is not None and step in (self.end_step, last_step):
            self.finish(step)

    def finish(self, step: int) -> None:
        synchronize(self.device)
        wall = time.perf_counter() - self.started
        self.profiler.__exit__(None, None, None)
        steps = step - self.start_step
        summary = {
            "steps": [self.start_step + 1, step],
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU",
            **summarize(self.profiler, wall, steps, "step", self.device),
        }
        (self.output_dir / self.SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        trace = save_trace(self.profiler, self.output_dir / self.TRACE)
        self.profiler = None
        logger.info(
            "steps %d-%d traced: %.3f s a step, the device busy %.0f%% of it, %.0f host operator calls a step; %s, %s",
            *summary["steps"],
            wall / steps,
            100 * summary["device_busy_share"],
            summary["host_operator_calls_per_step"],
            self.output_dir / self.SUMMARY,
            trace,
        )
