"""Video I/O shared by the recorder, the dataset and every stage's inference.

Videos in memory are uint8 arrays ``[F, H, W, 3]`` (frames, height, width, RGB). Model outputs
are float tensors in ``[-1, 1]`` shaped ``[F, C, H, W]``; ``tensor_to_uint8_frames`` converts them.
Files are H.264 in yuv420p so that browsers and common players open them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import decord
import imageio_ffmpeg
import numpy as np

RGB_CHANNELS = 3
# yuv420p stores colour at half resolution, so H.264 needs even heights and widths.
YUV420_ALIGNMENT = 2
# Constant rate factor of libx264: 18 is visually lossless, so training clips keep their detail.
H264_CRF = 18
UINT8_MAX = 255

# A 5x7 bitmap font, one string per glyph with rows separated by "|" ("#" = ink).
GLYPH_HEIGHT = 7
GLYPH_WIDTH = 5
GLYPH_SPACING = 1
_FONT_ROWS = {
    "A": ".###.|#...#|#...#|#####|#...#|#...#|#...#",
    "B": "####.|#...#|#...#|####.|#...#|#...#|####.",
    "C": ".###.|#...#|#....|#....|#....|#...#|.###.",
    "D": "####.|#...#|#...#|#...#|#...#|#...#|####.",
    "E": "#####|#....|#....|####.|#....|#....|#####",
    "F": "#####|#....|#....|####.|#....|#....|#....",
    "G": ".###.|#...#|#....|#.###|#...#|#...#|.####",
    "H": "#...#|#...#|#...#|#####|#...#|#...#|#...#",
    "I": ".###.|..#..|..#..|..#..|..#..|..#..|.###.",
    "J": "..###|...#.|...#.|...#.|...#.|#..#.|.##..",
    "K": "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#",
    "L": "#....|#....|#....|#....|#....|#....|#####",
    "M": "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#",
    "N": "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#",
    "O": ".###.|#...#|#...#|#...#|#...#|#...#|.###.",
    "P": "####.|#...#|#...#|####.|#....|#....|#....",
    "Q": ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#",
    "R": "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
    "S": ".####|#....|#....|.###.|....#|....#|####.",
    "T": "#####|..#..|..#..|..#..|..#..|..#..|..#..",
    "U": "#...#|#...#|#...#|#...#|#...#|#...#|.###.",
    "V": "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",
    "W": "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.",
    "X": "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",
    "Y": "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..",
    "Z": "#####|....#|...#.|..#..|.#...|#....|#####",
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.",
    "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####",
    "3": "####.|....#|....#|.###.|....#|....#|####.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.",
    "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": ".###.|#....|#....|####.|#...#|#...#|.###.",
    "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.",
    "9": ".###.|#...#|#...#|.####|....#|....#|.###.",
    " ": ".....|.....|.....|.....|.....|.....|.....",
    "-": ".....|.....|.....|#####|.....|.....|.....",
    "+": ".....|..#..|..#..|#####|..#..|..#..|.....",
    "_": ".....|.....|.....|.....|.....|.....|#####",
    ".": ".....|.....|.....|.....|.....|.##..|.##..",
    ",": ".....|.....|.....|.....|.##..|..#..|.#...",
    ":": ".....|.##..|.##..|.....|.##..|.##..|.....",
    "/": "....#|....#|...#.|..#..|.#...|#....|#....",
    "?": ".###.|#...#|....#|...#.|..#..|.....|..#..",
}
_UNKNOWN_GLYPH = "?"
_FONT = {
    char: np.array([[cell == "#" for cell in row] for row in rows.split("|")], dtype=bool)
    for char, rows in _FONT_ROWS.items()
}
# One font pixel per this many pixels of the frame's shorter side (at least 1): readable on
# 48x64 test clips and on 480x720 footage alike.
OVERLAY_PIXELS_PER_FONT_PIXEL = 96
OVERLAY_TEXT_COLOR = (255, 255, 255)
OVERLAY_BACKGROUND_COLOR = (0, 0, 0)


def as_uint8_frames(frames) -> np.ndarray:
    """Accept a numpy array or a torch tensor of uint8 frames ``[F, H, W, 3]``."""
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}; convert model outputs with tensor_to_uint8_frames")
    if frames.ndim != 4 or frames.shape[-1] != RGB_CHANNELS:
        raise ValueError(f"frames must be shaped [F, H, W, {RGB_CHANNELS}], got {list(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError("no frames to write: the video would be empty")
    return frames


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row/column where needed so yuv420p can store the frame without losing pixels."""
    pad_h = -frames.shape[1] % YUV420_ALIGNMENT
    pad_w = -frames.shape[2] % YUV420_ALIGNMENT
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def open_h264_writer(path: str | os.PathLike, width: int, height: int, fps: float, output_params: list[str]):
    """An imageio-ffmpeg frame sink writing H.264/yuv420p at the project's quality; send it uint8 frames."""
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        quality=None,
        macro_block_size=1,
        output_params=["-crf", str(H264_CRF), *output_params],
    )
    writer.send(None)
    return writer


def can_write_mp4() -> bool:
    """Whether ``write_mp4`` finds an ffmpeg executable (imageio-ffmpeg's binary or ``IMAGEIO_FFMPEG_EXE``): a long
    run asks before it starts rather than at its first video."""
    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return False
    return True


def write_mp4(frames, path: str | os.PathLike, fps: float) -> Path:
    """Write uint8 frames ``[F, H, W, 3]`` as an H.264/yuv420p mp4, atomically.

    The file appears at ``path`` only once complete (written beside it, then renamed), so a run
    killed mid-write never leaves a truncated video that a later dataset would choke on. Odd
    heights or widths are padded by one repeated row/column.
    """
    frames = pad_to_even(as_uint8_frames(frames))
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    # A unique hidden name beside the target (same filesystem, so the rename is atomic); it keeps
    # the .mp4 suffix because ffmpeg picks the container from it.
    tmp_name = str(path.parent / f".{path.stem}.{uuid.uuid4().hex}.partial.mp4")
    try:
        writer = open_h264_writer(tmp_name, width, height, fps, ["-movflags", "+faststart"])
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def read_video_info(path: str | os.PathLike) -> tuple[int, float, int, int]:
    """``(num_frames, fps, height, width)`` of a video file, as decord (the dataset's reader) sees it.

    Raises for files decord cannot open (decord scans every packet on opening, so a truncated
    file fails here) or whose first frame does not decode.
    """
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    height, width = reader[0].shape[:2]
    return len(reader), float(reader.get_avg_fps()), int(height), int(width)


def _render_text(text: str) -> np.ndarray:
    """Boolean ink mask of ``text`` at one pixel per font pixel; unknown characters become '?'."""
    glyphs = [_FONT.get(char, _FONT[_UNKNOWN_GLYPH]) for char in text.upper()]
    gap = np.zeros((GLYPH_HEIGHT, GLYPH_SPACING), dtype=bool)
    pieces = []
    for index, glyph in enumerate(glyphs):
        if index:
            pieces.append(gap)
        pieces.append(glyph)
    return np.concatenate(pieces, axis=1)


def draw_control_overlay(frames, labels: Sequence[str]) -> np.ndarray:
    """Copy of ``frames`` with ``labels[i]`` printed in the top-left corner of frame ``i``.

    A built-in bitmap font (A-Z, 0-9, a few symbols) on a dark box: no font files, so it works on
    any machine and any frame size, from 48x64 test clips up.
    """
    frames = as_uint8_frames(frames).copy()
    if len(labels) != len(frames):
        raise ValueError(f"{len(labels)} labels for {len(frames)} frames; give one label per frame")
    height, width = frames.shape[1:3]
    scale = max(1, min(height, width) // OVERLAY_PIXELS_PER_FONT_PIXEL)
    margin = scale
    for frame, label in zip(frames, labels):
        if not label:
            continue
        ink = _render_text(label).repeat(scale, axis=0).repeat(scale, axis=1)
        box_h = min(ink.shape[0] + 2 * margin, height)
        box_w = min(ink.shape[1] + 2 * margin, width)
        frame[:box_h, :box_w] = OVERLAY_BACKGROUND_COLOR
        visible = ink[: box_h - margin, : box_w - margin]
        frame[margin : margin + visible.shape[0], margin : margin + visible.shape[1]][visible] = OVERLAY_TEXT_COLOR
    return frames


def pipeline_video_to_signed(video):
    """A pipeline's ``output_type="pt"`` video (``frames[i]``, ``[F, C, H, W]`` in [0, 1]) in the VAE's [-1, 1]."""
    return video * 2 - 1


def tensor_to_uint8_frames(video) -> np.ndarray:
    """Float video in ``[-1, 1]`` shaped ``[F, C, H, W]`` (C = 3) to uint8 frames ``[F, H, W, 3]``."""
    if video.ndim != 4 or video.shape[1] != RGB_CHANNELS:
        raise ValueError(
            f"expected a video shaped [F, {RGB_CHANNELS}, H, W], got {list(video.shape)}; "
            "permute a [C, F, H, W] video with video.permute(1, 0, 2, 3) first"
        )
    video = video.detach().float().cpu().clamp(-1.0, 1.0)
    scaled = ((video + 1.0) * (UINT8_MAX / 2)).round()
    return scaled.permute(0, 2, 3, 1).numpy().astype(np.uint8)
