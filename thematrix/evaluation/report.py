"""What an evaluation writes: measures as JSON with the settings and the machine beside them, and a contact sheet."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from thematrix.evaluation.generation import ScoredVideo
from thematrix.video import draw_control_overlay

SHEET_COLUMNS = 8  # frames shown per video, evenly spaced from its first to its last
SHEET_VIDEOS = 4  # rows of a contact sheet: the first videos of an evaluation
PALETTE_COLOURS = 256


# A copied tree's git history can lag its files (a GPU host that receives a snapshot): the run's launcher then
# names the commit its files come from.
COMMIT_VARIABLE = "THEMATRIX_COMMIT"


def device_name() -> str:
    """The GPU's name, or the CPU's."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()})"


def environment() -> dict:
    """Where and when the numbers were measured."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    commit = os.environ.get(COMMIT_VARIABLE, commit)
    return {
        "device": device_name(),
        "torch": torch.__version__,
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(path: str | Path, measures: dict, settings: dict, elapsed_s: float) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"measures": measures, "settings": settings, "environment": environment(), "elapsed_s": elapsed_s}
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path


def frame_labels(video: ScoredVideo, frames_per_latent: int) -> list[str]:
    """The commanded token of each frame's latent frame ("" for context frames before the scored ones)."""
    count = len(video.frames)
    first = count - len(video.latent_tokens) * frames_per_latent
    return [
        "" if index < first else video.latent_tokens[(index - first) // frames_per_latent] for index in range(count)
    ]


def sheet_row(video: ScoredVideo, frames_per_latent: int, columns: int = SHEET_COLUMNS) -> torch.Tensor:
    """A contact sheet's row for ``video``: ``columns`` frames evenly spaced over it, each with its commanded
    control, side by side: uint8 ``[H, columns * W, 3]``."""
    labels = frame_labels(video, frames_per_latent)
    picked = np.linspace(0, len(video.frames) - 1, columns).round().astype(int)
    frames = video.frames[torch.from_numpy(picked)].permute(0, 2, 3, 1).numpy()
    labelled = draw_control_overlay(frames, [labels[index] for index in picked])
    return torch.from_numpy(np.concatenate(list(labelled), axis=1))


def contact_sheet(rows: list[torch.Tensor], path: str | Path) -> Path:
    """The ``sheet_row`` of each video, one under the other, as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A 256-colour palette: a third of the bytes of full colour, and game frames hold few colours.
    Image.fromarray(torch.cat(rows).numpy()).quantize(PALETTE_COLOURS).save(path, optimize=True)
    return path
