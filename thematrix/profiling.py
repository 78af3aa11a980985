"""Where a run's time goes: a summary of torch's profiler over some units of work (training steps, stream groups).

The summary says how long the device was busy (GPU kernels; on the CPU, aten operators) by kind of work, the share
of the wall time that is (below 1: the device waited for the host or the data; above 1 where CUDA streams overlap),
how many operators the host called per unit (each costs the host microseconds, whatever its size: what bounds small
models), and the top kernels. ``bench/bench_stream.py --profile`` and training's ``args.profile_steps`` write it.
"""

from __future__ import annotations

import gzip
import shutil
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
TOP_KERNELS = 12  # the kernels (operators) a summary lists by time


def work_kind(name: str) -> str:
    """The kind of work (``WORK_KINDS``) a kernel's or operator's name says it does."""
    lowered = name.lower()
    return next((kind for kind, patterns in WORK_KINDS.items() if any(p in lowered for p in patterns)), "other")


def activities(device: torch.device) -> list[torch.profiler.ProfilerActivity]:
    """What to record on ``device``: the host's operators, and the GPU's kernels on a GPU."""
    on_gpu = device.type == "cuda"
    return [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])


def summarize(profiler: torch.profiler.profile, wall_s: float, units: int, unit: str, on_gpu: bool) -> dict:
    """The summary (module docstring) of a finished ``profiler`` that ran ``units`` ``unit``s in ``wall_s`` seconds."""
    averages = profiler.key_averages()
    operators = [event for event in averages if event.key.startswith("aten::")]
    if on_gpu:
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
        "top": [
            {"name": name[:120], "seconds": seconds, "calls": calls}
            for name, seconds, calls in sorted(work, key=lambda item: -item[1])[:TOP_KERNELS]
        ],
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
