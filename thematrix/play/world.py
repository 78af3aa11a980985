"""One live world shared by every viewer: the model's stream, steered by the held keys, shown at its frame rate.

Two threads keep the model away from the web server's event loop:

- generation runs the stream segment by segment and queues each chunk (uint8 frames and the controls they were
  generated under) for playback. It starts a chunk, and so reads the keys for the group entering the window, only
  when the frames still to show last ``GENERATION_HEADROOM`` times the last chunk's generation time: late enough
  that the keys are fresh, early enough to hide the generation. So it runs at most that far ahead of playback,
  whatever the browsers do.
- playback takes the chunks in order and shows each frame at the stream's frame rate (or as it comes, when
  generation is slower than that): JPEG-encoded, recorded while a recording is on, and handed to ``on_frame``, the
  server's fan-out to its tabs, which must not block (a slow tab drops frames there, counted).

A segment is one call of the model's stream: from a clip, with a prompt and the session's seed. Starting and
restarting discard what is buffered. A new prompt or a recording continues the world from its last generated
frames: they are written to an mp4 and read back as the next segment's initial clip, exactly as inference.py reads
``--initial_video``, so a recorded segment replays offline from that file with the same result.
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from thematrix.controls import ControlVocabulary
from thematrix.data.initial_clip import InitialClip
from thematrix.play.keymap import KeyMap
from thematrix.play.recording import Recording
from thematrix.video import tensor_to_uint8_frames, write_mp4

GENERATION_HEADROOM = 1.5  # margin over the last chunk's generation time for the next one (its time varies)
JPEG_QUALITY = 90
FPS_WINDOW_S = 1.0  # frame rates are measured over the last second


class WorldModel(Protocol):
    """What the world needs from a stage's pipeline and inference script (each stage's play.py provides it)."""

    vocabulary: ControlVocabulary
    fps: float
    group_size: int
    num_groups: int
    initial_frames: int
    default_prompt: str
    inference_module: str

    def sample_names(self) -> list[str]:
        """The dataset's usable clips the page may start from (empty without a dataset)."""

    def clip_from_sample(self, index: int) -> InitialClip: ...

    def clip_from_file(self, path: Path) -> InitialClip: ...

    def stream(self, clip: InitialClip, prompt: str, controls: Callable[[int], list[str]]) -> Iterator:
        """The endless stream of chunks (``frames`` ``[n, 3, H, W]`` in [-1, 1], ``frame_controls``, ``group_index``)."""

    def replay_arguments(self, initial_video: str, prompt: str, controls: str, groups: int, output: str) -> list[str]:
        """inference.py's arguments that generate the first ``groups`` groups of such a stream again."""


@dataclass(frozen=True)
class ControlChange:
    """The n-th change of the control token, and when it reached the server (``time.monotonic``)."""

    number: int
    time: float


@dataclass
class Segment:
    """One call of the model's stream; ``groups`` logs the W tokens the stream asked for each group, in order."""

    number: int
    epoch: int
    clip: InitialClip
    prompt: str
    starts_recording: bool  # made for a recording, which starts with its first frame on screen
    groups: list[tuple[list[str], ControlChange]] = field(default_factory=list)
    first_shown: bool = False


@dataclass(frozen=True)
class PlayChunk:
    """A generated chunk on its way to the screen."""

    segment: Segment
    group: int
    frames: np.ndarray  # uint8 [n, H, W, 3]
    frame_controls: list[str]
    change: ControlChange


@dataclass(frozen=True)
class ShownFrame:
    """A frame as the tabs get it: JPEG bytes and what the page shows beside it."""

    jpeg: bytes
    header: dict


@dataclass
class _SegmentRequest:
    clip: InitialClip | None  # None: continue from the last generated frames
    prompt: str
    record: bool = False


class World:
    """The live stream and its controls. Methods may be called from any thread; none waits for the model."""

    def __init__(self, model: WorldModel, keymap: KeyMap, recordings_dir: Path, work_dir: Path):
        self.model = model
        self.keymap = keymap
        self.recordings_dir = recordings_dir
        recordings_dir.mkdir(parents=True, exist_ok=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir = Path(tempfile.mkdtemp(prefix="session-", dir=work_dir))  # continuation clips, uploads
        self.on_frame: Callable[[ShownFrame], None] = lambda frame: None
        self.on_state: Callable[[dict], None] = lambda state: None
        self._changed = threading.Condition()
        self._closed = False
        self._epoch = 0
        self._request: _SegmentRequest | None = None
        self._chunks: deque[PlayChunk] = deque()
        self._paused = False
        self._source: InitialClip | None = None
        self._prompt = model.default_prompt
        self._token = keymap.rest_token or model.vocabulary.tokens[0]
        self._change = ControlChange(0, time.monotonic())
        self._segments = 0
        self._stopped = False  # generation ended by an error, until the next start
        self._error: str | None = None  # the last problem, for the page
        # Recording: "off", "armed" (waiting for its segment to reach the screen), "on".
        self._record_state = "off"
        self._recording: Recording | None = None
        self._last_recording: str | None = None
        self._recordings = 0
        self._ring: deque[np.ndarray] = deque(maxlen=model.initial_frames)
        self._shown_times: deque[float] = deque()
        self._generation_fps: float | None = None
        self._generation_s = 0.0  # the last chunk's generation time
        self._playing_left = 0  # frames of the chunk on screen still to show
        self._frames_shown = 0
        self._last_change_shown = 0
        self._threads = [
            threading.Thread(target=self._generate, name="world-generation", daemon=True),
            threading.Thread(target=self._play, name="world-playback", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # Commands.

    def start(self, clip: InitialClip, prompt: str | None = None) -> None:
        """A new world from ``clip`` (prompt: given, else the clip's caption, else the current one); drops the
        buffered frames and ends a recording (which takes a moment: call it from a worker thread)."""
        with self._changed:
            self._source = clip
            self._prompt = prompt or clip.caption or self._prompt
            self._epoch += 1
            self._chunks.clear()
            self._paused = False
            self._request = _SegmentRequest(clip, self._prompt)
            self._stopped, self._error = False, None
            recording = self._stop_recording()
            self._changed.notify_all()
        self._finish(recording)

    def restart(self) -> None:
        """The current world again from its initial clip, with the current prompt."""
        with self._changed:
            if self._source is None:
                raise RuntimeError("nothing to restart: start from a clip first")
            source, prompt = self._source, self._prompt
        self.start(source, prompt)

    def set_prompt(self, prompt: str) -> None:
        """Continue the world from its last generated frames under ``prompt``."""
        if not prompt.strip():
            raise ValueError("the prompt is empty; describe the world to continue")
        with self._changed:
            self._prompt = prompt
            self._continue()
        self._publish_state()

    def set_paused(self, paused: bool) -> None:
        with self._changed:
            self._paused = paused
            self._changed.notify_all()
        self._publish_state()

    def set_recording(self, on: bool) -> None:
        """On: the world continues in a new segment, recorded from its first frame on screen. Off: the recording
        ends with the frame on screen and is written out (this takes a moment: call it from a worker thread)."""
        with self._changed:
            if on and self._record_state == "off" and self._source is not None:
                self._record_state = "armed"  # the generator continues in a recorded segment after its chunk
                self._changed.notify_all()
            recording = None if on else self._stop_recording()
        self._finish(recording)

    def set_held_keys(self, codes: Sequence[str]) -> str:
        """The keys held in the page now; returns the control token the generator receives from now on."""
        token = self.keymap.resolve(codes)
        with self._changed:
            if token is not None and token != self._token:
                self._token = token
                self._change = ControlChange(self._change.number + 1, time.monotonic())
            token = self._token
        self._publish_state()
        return token

    def state(self) -> dict:
        with self._changed:
            return {
                "running": self._source is not None and not self._stopped,
                "source": self._source.name if self._source else None,
                "paused": self._paused,
                "prompt": self._prompt,
                "control": self._token,
                "segment": self._segments,
                "recording": self._record_state,
                "last_recording": self._last_recording,
                "error": self._error,
            }

    def close(self) -> None:
        """Stop both threads; a recording on is written out."""
        with self._changed:
            self._closed = True
            recording = self._stop_recording()
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()
        self._finish(recording)
        shutil.rmtree(self.work_dir, ignore_errors=True)

    # Called with the lock held.

    def _stop_recording(self) -> Recording | None:
        """The recording to finish, if one is on; the state is "off" after."""
        recording, self._recording, self._record_state = self._recording, None, "off"
        return recording

    def _continue(self, record: bool = False) -> None:
        """Ask for a segment that continues from the last generated frames (or update the one asked for)."""
        if self._source is None:
            return
        if self._request is None:
            self._request = _SegmentRequest(None, self._prompt, record)
        else:
            self._request.prompt, self._request.record = self._prompt, self._request.record or record
        self._changed.notify_all()

    # Generation thread.

    def _generate(self) -> None:
        while True:
            with self._changed:
                while not self._closed and self._request is None:
                    self._changed.wait()
                if self._closed:
                    return
                request, self._request, epoch = self._request, None, self._epoch
                self._segments += 1
                number = self._segments
            try:
                clip = request.clip or self._continuation_clip(number)
                segment = Segment(number, epoch, clip, request.prompt, request.record)
                self._ring = deque(tensor_to_uint8_frames(clip.video), maxlen=self.model.initial_frames)
                self._run(segment)
            except Exception as error:  # shown on the page; the server keeps serving
                self._fail(error, stopped=True)

    def _continuation_clip(self, number: int) -> InitialClip:
        path = write_mp4(np.stack(self._ring), self.work_dir / f"segment-{number}.mp4", fps=self.model.fps)
        return self.model.clip_from_file(path)

    def _run(self, segment: Segment) -> None:
        width = self.model.group_size

        def controls(group: int) -> list[str]:
            with self._changed:
                token, change = self._token, self._change
            tokens = [token] * width
            segment.groups.append((tokens, change))
            return tokens

        chunks = self.model.stream(segment.clip, segment.prompt, controls)
        while True:
            with self._changed:
                while self._current(segment) and not self._next_segment_asked(segment) and self._ahead_of_need():
                    self._changed.wait()
                if not self._current(segment) or self._next_segment_asked(segment):
                    return
            started = time.perf_counter()
            chunk = next(chunks)
            frames = tensor_to_uint8_frames(chunk.frames)
            self._generation_s = time.perf_counter() - started
            self._generation_fps = len(frames) / self._generation_s
            self._ring.extend(frames)
            play = PlayChunk(
                segment, chunk.group_index, frames, list(chunk.frame_controls), segment.groups[chunk.group_index][1]
            )
            with self._changed:
                if not self._current(segment):
                    return
                self._chunks.append(play)
                self._changed.notify_all()

    def _current(self, segment: Segment) -> bool:
        return not self._closed and segment.epoch == self._epoch

    def _ahead_of_need(self) -> bool:
        """Whether the frames still to show outlast the next chunk's generation (with headroom)."""
        frames = self._playing_left + sum(len(chunk.frames) for chunk in self._chunks)
        return frames / self.model.fps > GENERATION_HEADROOM * self._generation_s

    def _next_segment_asked(self, segment: Segment) -> bool:
        """Whether ``segment`` should end here: a new segment is asked for, or a recording needs one."""
        if self._record_state == "armed" and (segment.first_shown or not segment.starts_recording):
            self._continue(record=True)
        return self._request is not None

    # Playback thread.

    def _play(self) -> None:
        period = 1.0 / self.model.fps
        due = time.monotonic()
        while True:
            with self._changed:
                while not self._closed and (self._paused or not self._chunks):
                    self._changed.wait()
                if self._closed:
                    return
                chunk = self._chunks.popleft()
                self._playing_left = len(chunk.frames)
            try:
                for index in range(len(chunk.frames)):
                    due = self._wait_until(due, chunk.segment)
                    if due is None:  # cut: the next world's first frame shows as soon as it comes
                        due = time.monotonic()
                        break
                    self._show(chunk, index)
                    due = max(due, time.monotonic()) + period
                    with self._changed:
                        self._playing_left -= 1
                        self._changed.notify_all()
            except Exception as error:  # shown on the page; playback goes on with the next chunk
                self._fail(error)
            with self._changed:
                self._playing_left = 0
                self._changed.notify_all()

    def _wait_until(self, due: float, segment: Segment) -> float | None:
        """Wait for the frame's time (longer while paused); None if the segment was cut or the world closed."""
        with self._changed:
            while self._current(segment):
                if self._paused:
                    self._changed.wait()
                    due = time.monotonic()
                    continue
                remaining = due - time.monotonic()
                if remaining <= 0:
                    return due
                self._changed.wait(remaining)
        return None

    def _show(self, chunk: PlayChunk, index: int) -> None:
        self._record(chunk, index)
        buffer = io.BytesIO()
        Image.fromarray(chunk.frames[index]).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        now = time.monotonic()
        latency_ms = None
        if index == 0 and chunk.change.number > self._last_change_shown:
            latency_ms = (now - chunk.change.time) * 1000
            self._last_change_shown = chunk.change.number
        self._shown_times.append(now)
        while now - self._shown_times[0] > FPS_WINDOW_S:
            self._shown_times.popleft()
        self._frames_shown += 1
        self.on_frame(
            ShownFrame(
                buffer.getvalue(),
                {
                    "frame": self._frames_shown,
                    "segment": chunk.segment.number,
                    "group": chunk.group,
                    "control": chunk.frame_controls[index],
                    "latency_ms": latency_ms,
                    "server_fps": len(self._shown_times) / FPS_WINDOW_S,
                    "generation_fps": self._generation_fps,
                },
            )
        )

    def _record(self, chunk: PlayChunk, index: int) -> None:
        with self._changed:
            first = chunk.group == 0 and index == 0
            started = first and self._record_state == "armed" and chunk.segment.starts_recording
            chunk.segment.first_shown = chunk.segment.first_shown or first
            if started:
                self._recordings += 1
                name = time.strftime("%Y%m%d-%H%M%S") + f"-{self._recordings}"
                self._recording = Recording(self.recordings_dir / name, self.model)
                self._record_state = "on"
            recording = self._recording
        if started:
            self._publish_state()
        if recording is not None:
            recording.write(chunk.frames[index], chunk.frame_controls[index], chunk.segment, chunk.group)

    def _finish(self, recording: Recording | None) -> None:
        """Write out a stopped recording (its mp4, replay files and archive) and tell the tabs."""
        if recording is not None:
            try:
                archive = recording.finish()
                with self._changed:
                    self._last_recording = archive.name
            except Exception as error:
                self._fail(error)
                return
        self._publish_state()

    def _fail(self, error: Exception, stopped: bool = False) -> None:
        """Report ``error`` on the page (and the console); ``stopped``: generation ended with it."""
        traceback.print_exc()
        with self._changed:
            self._error = f"{type(error).__name__}: {error}"
            self._stopped = self._stopped or stopped
            if stopped and self._record_state == "armed":
                self._record_state = "off"
        self._publish_state()

    def _publish_state(self) -> None:
        try:
            self.on_state(self.state())
        except Exception:  # a viewer's failure never stops the world
            traceback.print_exc(file=sys.stderr)
