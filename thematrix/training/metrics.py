"""What a run reports: its metrics to the trackers accelerate supports, to ``metrics.jsonl`` and as ``metrics.png``.

``metrics.jsonl`` holds one JSON object per optimizer step and per validation (``{"step": N, "loss": ...}``);
a resumed run first drops what the interrupted run logged after its checkpoint, so the file and the plot
tell one consistent story.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from thematrix.config import ConfigError

NO_TRACKER = "none"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
# Metrics drawn in one panel; every other metric gets a panel of its own.
SHARED_PANELS = (("loss", "validation_loss"),)
PANEL_SIZE_INCHES = (8.0, 2.2)
PLOT_DPI = 100
VALIDATION_PREFIX = "validation_"  # metrics measured at validations only: their few points are marked
FRAMES_PER_LOGGED_VIDEO = 4
# Trackers whose ``log_images`` takes a list of [H, W, C] images per name (tensorboard takes a [N, H, W, C] array).
LIST_IMAGE_TRACKERS = ("wandb", "swanlab")


def tracker_names(report_to: str) -> list[str]:
    """``args.report_to`` as accelerate's ``log_with``, checked: known tracker names, their packages installed."""
    names = [name.strip() for name in report_to.split(",") if name.strip()]
    if names == [NO_TRACKER]:
        return []
    supported = [tracker.value for tracker in LoggerType]
    unknown = [name for name in names if name not in supported]
    if unknown or not names:
        raise ConfigError(
            f"args.report_to = {report_to!r}: {unknown} is not a tracker accelerate supports; use {NO_TRACKER!r}, "
            f"or one or several (joined by commas) of {supported}"
        )
    available = {tracker.value for tracker in get_available_trackers()}
    missing = [name for name in names if name != LoggerType.ALL.value and name not in available]
    if missing:
        raise ConfigError(
            f"args.report_to = {report_to!r} needs {', '.join(missing)}, which is not installed: "
            f"`pip install {' '.join(missing)}`, or report to {sorted(available) or NO_TRACKER!r}"
        )
    return names


class RunMetrics:
    """Logs a run's metrics (main process): every step to ``metrics.jsonl``, every ``logging_steps`` to the trackers."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, logging_steps: int, first_step: int):
        self.accelerator = accelerator
        self.path = output_dir / METRICS_FILE
        self.plot_path = output_dir / PLOT_FILE
        self.logging_steps = logging_steps
        if accelerator.is_main_process:
            kept = [record for record in read_records(self.path) if record["step"] <= first_step]
            self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))

    def log(self, values: dict[str, float], step: int, always: bool = False) -> None:
        """Record ``values`` of ``step``; ``always`` sends them to the trackers whatever ``logging_steps`` says."""
        if not self.accelerator.is_main_process:
            return
        append_record(self.path, step, values)
        if always or step % self.logging_steps == 0:
            self.accelerator.log(values, step=step)

    def log_frames(self, name: str, frames: np.ndarray, step: int) -> None:
        """A few frames [N, H, W, C] of a validation video, to the trackers that take images."""
        sampled = frames[:: max(1, len(frames) // FRAMES_PER_LOGGED_VIDEO)]
        for tracker in self.accelerator.trackers:
            if tracker.name == LoggerType.TENSORBOARD.value:
                tracker.log_images({name: sampled}, step, dataformats="NHWC")
            elif tracker.name in LIST_IMAGE_TRACKERS:
                tracker.log_images({name: list(sampled)}, step)

    def plot(self) -> None:
        """Draw every metric logged so far against the step into ``metrics.png`` (main process)."""
        if self.accelerator.is_main_process:
            plot_metrics(read_records(self.path), self.plot_path)


def append_record(path: Path, step: int, values: dict[str, float]) -> None:
    """One line of ``metrics.jsonl``: ``{"step": step, **values}``."""
    with path.open("a") as file:
        file.write(json.dumps({"step": step, **values}) + "\n")


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(records: list[dict[str, Any]], path: Path) -> None:
    """One panel per metric (the training and validation loss share one), written atomically as a PNG."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in records:
        for name, value in record.items():
            if name != "step":
                series[name].append((record["step"], value))
    if not series:
        return
    shared = [tuple(name for name in panel if name in series) for panel in SHARED_PANELS]
    panels = [panel for panel in shared if panel]
    panels += [(name,) for name in series if not any(name in panel for panel in SHARED_PANELS)]
    figure = Figure(figsize=(PANEL_SIZE_INCHES[0], PANEL_SIZE_INCHES[1] * len(panels)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axis, panel in zip(axes, panels):
        for name in panel:
            steps, values = zip(*series[name])
            axis.plot(steps, values, label=name, marker="o" if name.startswith(VALIDATION_PREFIX) else None)
        axis.set_ylabel(panel[0] if len(panel) == 1 else "")
        if len(panel) > 1:
            axis.legend()
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("optimizer step")
    figure.tight_layout()
    partial = path.with_name(path.name + ".partial")
    figure.savefig(partial, dpi=PLOT_DPI, format="png")
    os.replace(partial, path)
