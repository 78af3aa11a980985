"""The clip a stream starts from: the end of a video file, or the first frames of a dataset sample.

Both come out as training clips do (frames picked by time at the stream's fps, resized and center-cropped by
the dataset's own code, in [-1, 1]), so the window a stream starts from is one the model was trained on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import decord
import numpy as np
import torch

from thematrix.controls import ControlVocabulary
from thematrix.data.dataset import (
    FPS_TOLERANCE,
    UINT8_HALF_RANGE,
    DatasetError,
    VideoDataset,
    resize_center_crop,
    time_indices,
)
from thematrix.data.decoder import VideoDecodeError, decode_quietly
from thematrix.data.index import Sample


@dataclass(frozen=True)
class InitialClip:
    """A clip a stream starts from: ``video`` ``[F, 3, H, W]`` in [-1, 1], and what the stream takes from where it
    came from (a sample's caption and the control of its condition latent frame; the file it was read from)."""

    video: torch.Tensor
    name: str
    caption: str | None = None
    initial_control: str | None = None
    path: Path | None = None


def video_end(
    path: str | os.PathLike, fps: float, height: int, width: int, frames: int, setting: str = "--initial_video"
) -> torch.Tensor:
    """The last ``frames`` frames of a video file at ``fps``, resized and center-cropped as the dataset does:
    ``[frames, 3, H, W]`` in [-1, 1]. Errors name ``setting``; decord's log stays off the terminal."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{setting} {path}: no such file")
    try:
        reader = decode_quietly(lambda: decord.VideoReader(str(path), ctx=decord.cpu(0)))
    except VideoDecodeError as error:
        raise DatasetError(f"{setting} {path}: cannot be decoded as a video ({error})") from None
    source_fps = float(reader.get_avg_fps())
    if source_fps < fps * (1 - FPS_TOLERANCE):
        raise DatasetError(f"{setting} {path} is {source_fps:g} fps, below the model's {fps:g} fps: record it faster")
    # Frames counted back from the last one, one per 1/fps seconds.
    steps_back = time_indices(np.arange(int(len(reader) * fps / source_fps) + 1), source_fps, fps)
    steps_back = steps_back[steps_back < len(reader)]
    if len(steps_back) < frames:
        raise DatasetError(
            f"{setting} {path} gives {len(steps_back)} frames at {fps:g} fps; the stream starts from the last "
            f"{frames} ({frames / fps:.1f} s): pass a longer video"
        )
    indices = (len(reader) - 1 - steps_back[:frames])[::-1]
    pixels = decode_quietly(lambda: reader.get_batch(indices.tolist()).asnumpy())
    video = resize_center_crop(torch.from_numpy(pixels).permute(0, 3, 1, 2).float(), height, width)
    return (video / UINT8_HALF_RANGE - 1.0).clamp(-1.0, 1.0)


def sample_start(
    samples: Sequence[Sample],
    index: int,
    *,
    fps: float,
    height: int,
    width: int,
    frames: int,
    temporal_compression: int,
    vocabulary: ControlVocabulary | None,
    setting: str = "--sample_index",
) -> dict:
    """The first ``frames`` frames of ``samples[index]`` (the usable samples ``load_index`` returned), as
    ``VideoDataset`` gives them: ``video`` ``[frames, 3, H, W]``, ``caption``, ``path``, ``control_tokens``."""
    if not 0 <= index < len(samples):
        raise DatasetError(
            f"{setting} {index}: the dataset has {len(samples)} usable samples; pass 0..{len(samples) - 1}"
        )
    try:
        dataset = VideoDataset(
            [samples[index]],
            fps=fps,
            height=height,
            width=width,
            frame_buckets=(frames,),
            temporal_compression=temporal_compression,
            vocabulary=vocabulary,
        )
    except DatasetError as error:
        raise DatasetError(f"{setting} {index}: the stream starts from {frames} frames; {error}") from None
    return dataset[0]
