"""An mp4 written while a stream is generated, chunk by chunk, for streams too long to hold in memory.

The file grows at ``<path>.partial`` as fragmented MP4 (a fragment per second, flushed at once), so a
player can open it while the stream runs and a run that stops early leaves a playable file there; the
complete file appears at ``<path>`` only on a clean ``close``, as ``write_mp4`` guarantees for whole videos.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import numpy as np

from thematrix.video import as_uint8_frames, open_h264_writer, pad_to_even

PARTIAL_SUFFIX = ".partial"
MICROSECONDS_PER_SECOND = 1_000_000
FRAGMENT_SECONDS = 1  # how far the partial file may lag behind the frames sent
# Fragmented MP4 needs no index at the end; zerolatency makes x264 emit each frame as it arrives.
STREAMING_OUTPUT_PARAMS = [
    "-f",
    "mp4",
    "-tune",
    "zerolatency",
    "-flush_packets",
    "1",
    "-movflags",
    "+frag_keyframe+empty_moov+default_base_moof",
    "-frag_duration",
    str(FRAGMENT_SECONDS * MICROSECONDS_PER_SECOND),
]


class Mp4StreamWriter:
    """Append uint8 frames ``[n, H, W, 3]`` to an H.264/yuv420p mp4; use as a context manager.

    Every chunk must have the first chunk's size (odd sizes are padded by one repeated row/column).
    Leaving the ``with`` block normally finalises and renames the file; leaving it by an exception closes
    the partial file, playable up to its last fragment, and leaves it at ``partial_path``.
    """

    def __init__(self, path: str | os.PathLike, fps: float):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.fps = fps
        self.frames_written = 0
        self._writer = None
        self._size: tuple[int, int] | None = None  # (width, height) after padding

    def __enter__(self) -> Mp4StreamWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self._close_partial()

    def write(self, frames) -> None:
        """Append ``frames`` (uint8 ``[n, H, W, 3]``, numpy or torch)."""
        frames = pad_to_even(as_uint8_frames(frames))
        size = (frames.shape[2], frames.shape[1])
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = open_h264_writer(self.partial_path, *size, self.fps, STREAMING_OUTPUT_PARAMS)
            self._size = size
        elif size != self._size:
            raise ValueError(
                f"frames of {size[0]}x{size[1]} (width x height) sent to a video of {self._size[0]}x{self._size[1]}"
            )
        for frame in frames:
            self._writer.send(np.ascontiguousarray(frame))
        self.frames_written += len(frames)

    def close(self) -> Path:
        """Finish the file and move it to ``path``; returns ``path``."""
        if not self.frames_written:
            raise ValueError(f"no frames were written to {self.path}: the video would be empty")
        if self._writer is not None:
            self._close_partial()
            os.replace(self.partial_path, self.path)
        return self.path

    def _close_partial(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
