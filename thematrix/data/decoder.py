"""Reading videos through decord without its native log on the user's terminal.

decord prints from C++ to the process's stderr: FFmpeg's messages ("moov atom not found") and its own
log lines ("[12:00:00] /src/video/video_reader.cc:83: ERROR opening: clip.mp4, Invalid data found when
processing input"). FFmpeg's are switched off with decord's log level; decord's own go through a logger
without a switch, so they are captured at the file-descriptor level while decord runs, and the last
one, without its time and source location, becomes the reason of the error that follows. Anything
else written to stderr meanwhile (another thread's output) is passed on.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import TypeVar

import decord

STDERR_FD = 2
# "[12:00:00] /path/to/source.cc:83: " before each of decord's messages.
_LOG_LOCATION_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")
# "[mov,mp4,m4a @ 0x55e8e7f41240] " before each of FFmpeg's, should any come through.
_FFMPEG_PREFIX = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\]")

T = TypeVar("T")


class VideoDecodeError(RuntimeError):
    """decord could not open or decode a file; the message is one line saying why."""


@contextlib.contextmanager
def _captured_native_stderr() -> Iterator[list[str]]:
    """Lines written to file descriptor 2 inside the block, by Python or native code, kept off the terminal."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(STDERR_FD)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), STDERR_FD)
            try:
                yield lines
            finally:
                os.dup2(saved, STDERR_FD)
                capture.seek(0)
                lines += capture.read().decode(errors="replace").splitlines()
    finally:
        os.close(saved)


def _reason(error: Exception, log: list[str]) -> str:
    """decord's last log line (it says why) or else the exception's first line, without time and location."""
    candidates = [line for line in log if _LOG_LOCATION_PREFIX.match(line)] or str(error).strip().splitlines()
    return _LOG_LOCATION_PREFIX.sub("", candidates[-1]).strip() if candidates else type(error).__name__


def decode_quietly(read: Callable[[], T]) -> T:
    """``read()``, a call into decord, with its native log kept off the terminal.

    A failure raises ``VideoDecodeError`` with one clean line; decord raises several types
    (DECORDError, RuntimeError, AssertionError) for unreadable files.
    """
    decord.logging.set_level(decord.logging.QUIET)
    failure = None
    with _captured_native_stderr() as log:
        try:
            result = read()
        except Exception as error:  # noqa: BLE001 - every decord failure becomes one message
            failure = error
    others = [line for line in log if not (_LOG_LOCATION_PREFIX.match(line) or _FFMPEG_PREFIX.match(line))]
    if others:
        print("\n".join(others), file=sys.stderr)
    if failure is not None:
        raise VideoDecodeError(_reason(failure, log)) from None
    return result
