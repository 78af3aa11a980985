"""A recording of the live world: the frames as shown, with their controls drawn, and what replays them offline.

A recording starts with a segment of its own (the world continues from its last frames, written to an mp4), so
each recorded segment is one inference.py run from that file with the controls the stream asked for. Each segment
is encoded on its own, as inference.py encodes its video, and the parts are joined without re-encoding, so the
replay's frames equal the recording's exactly. Its folder:

    recording.mp4         every frame shown while recording, its control drawn as inference.py draws it
    segment-<n>.mp4       the initial clip of each recorded segment
    replay.json           per segment: inference.py's module and arguments, and how many frames of the recording
                          it makes (the first ``frames`` frames of the replay's video are those frames)
    replay.sh             the same commands, run from the folder

and beside it ``<folder>.zip`` holding all of them, which the page downloads.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import imageio_ffmpeg
import numpy as np

from thematrix.controls import CONTROL_SEPARATOR
from thematrix.video import draw_control_overlay
from thematrix.video_stream import Mp4StreamWriter

if TYPE_CHECKING:
    from thematrix.play.world import Segment, WorldModel

VIDEO_NAME = "recording.mp4"
REPLAY_FILE = "replay.json"
REPLAY_SCRIPT = "replay.sh"
ARCHIVE_FORMAT = "zip"


@dataclass
class _RecordedSegment:
    segment: Segment
    video: Mp4StreamWriter
    frames: int = 0
    groups: int = 0  # groups 0 .. groups - 1 of the segment reached the recording (the last maybe in part)


def join_videos(parts: list[Path], output: Path) -> None:
    """Concatenate mp4s of one encoding without re-encoding them (each starts with a key frame)."""
    listing = output.with_suffix(".txt")
    listing.write_text("".join(f"file '{part.name}'\n" for part in parts))
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-f",
            "concat",
            "-safe",
            "0",
            "-i",
            str(listing),
            "-c",
            "copy",
            "-movflags",
            "+faststart",
            str(output),
        ],
        check=True,
        capture_output=True,
    )
    listing.unlink()


class Recording:
    """Frames written as they are shown; ``finish`` writes the replay files and the archive. Thread-safe."""

    def __init__(self, directory: Path, model: WorldModel):
        self.directory = directory
        self.model = model
        directory.mkdir(parents=True)
        self._segments: list[_RecordedSegment] = []
        self._lock = threading.Lock()
        self._finished = False

    def write(self, frame: np.ndarray, control: str, segment: Segment, group: int) -> None:
        """Append one shown frame (uint8 ``[H, W, 3]``) of ``segment``'s group ``group``, generated under ``control``."""
        with self._lock:
            if self._finished:
                return
            if not self._segments or self._segments[-1].segment is not segment:
                if segment.clip.path is None:
                    raise ValueError(f"segment {segment.number} has no initial clip file to replay it from")
                shutil.copyfile(segment.clip.path, self.directory / self._clip_name(segment))
                part = self.directory / f"part-{len(self._segments) + 1}.mp4"
                self._segments.append(_RecordedSegment(segment, Mp4StreamWriter(part, fps=self.model.fps)))
            recorded = self._segments[-1]
            recorded.video.write(draw_control_overlay(frame[None], [control]))
            recorded.frames += 1
            recorded.groups = max(recorded.groups, group + 1)

    def finish(self) -> Path:
        """Close the video, write the replay files and the archive; returns the archive's path."""
        with self._lock:
            self._finished = True
            if not self._segments:
                shutil.rmtree(self.directory)
                raise ValueError("the recording stopped before its first frame was shown; nothing was recorded")
            parts = [recorded.video.close() for recorded in self._segments]
            join_videos(parts, self.directory / VIDEO_NAME)
            for part in parts:
                part.unlink()
            replays = [self._replay(recorded, index) for index, recorded in enumerate(self._segments, start=1)]
        (self.directory / REPLAY_FILE).write_text(json.dumps({"fps": self.model.fps, "segments": replays}, indent=2))
        commands = [shlex.join(["python", "-m", replay["module"], *replay["arguments"]]) for replay in replays]
        script = ["#!/usr/bin/env bash", "set -euo pipefail", 'cd "$(dirname "$0")"', *commands]
        (self.directory / REPLAY_SCRIPT).write_text("\n".join(script) + "\n")
        archive = shutil.make_archive(str(self.directory), ARCHIVE_FORMAT, root_dir=self.directory)
        return Path(archive)

    def _replay(self, recorded: _RecordedSegment, index: int) -> dict:
        """inference.py's run for one segment: the groups recorded need the controls of the groups still in the
        window when the last of them was emitted, ``groups + num_groups - 1`` lists in all, given in full so that
        inference.py's per-latent-frame pattern never wraps."""
        segment = recorded.segment
        asked = segment.groups[: recorded.groups + self.model.num_groups - 1]
        controls = CONTROL_SEPARATOR.join(token for tokens, _ in asked for token in tokens)
        arguments = self.model.replay_arguments(
            initial_video=self._clip_name(segment),
            prompt=segment.prompt,
            controls=controls,
            groups=recorded.groups,
            output=f"replay-{index}.mp4",
        )
        return {"module": self.model.inference_module, "arguments": arguments, "frames": recorded.frames}

    @staticmethod
    def _clip_name(segment: Segment) -> str:
        return f"segment-{segment.number}.mp4"
