"""Data pipeline: video I/O, index checking, the dataset's sampling, bucket batches, the recorder."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import thematrix.video as video_module
from thematrix.controls import VOCABULARY_FILE, ControlError, ControlVocabulary, load_vocabulary
from thematrix.data.dataset import (
    BucketBatchSampler,
    DatasetError,
    VideoDataset,
    collate_batch,
    footage_fps,
)
from thematrix.data.decoder import STDERR_FD, VideoDecodeError, decode_quietly
from thematrix.data.index import IndexFormatError, Sample, load_index
from thematrix.data.validate import main as validate_main
from thematrix.video import (
    draw_control_overlay,
    read_video_info,
    tensor_to_uint8_frames,
    write_mp4,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPORAL_COMPRESSION = 4
# Frame k of a synthetic clip is a flat grey of level k * LEVEL_STEP: H.264 keeps flat frames
# within a couple of levels, so the frame number survives encoding and resizing.
LEVEL_STEP = 6
HEIGHT, WIDTH = 48, 64
# A game of these tests' own: nothing here depends on any particular game's keys.
VOCABULARY = ControlVocabulary(
    ("UP", "DOWN", "LEFT", "RIGHT", "FIRE", "WAIT"),
    (
        "The ship climbs.",
        "The ship sinks.",
        "The ship moves left.",
        "The ship moves right.",
        "The ship fires.",
        "The ship hovers in place.",
    ),
)


def grey_frames(num_frames: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    levels = (np.arange(num_frames) * LEVEL_STEP).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def frame_tokens(num_frames: int) -> list[str]:
    """Per-frame controls that also encode the frame number (mod the vocabulary size)."""
    return [VOCABULARY.tokens[k % len(VOCABULARY)] for k in range(num_frames)]


def decoded_frame_numbers(video: torch.Tensor) -> list[int]:
    """Frame numbers of a dataset video [F, C, H, W] in [-1, 1] made from grey_frames."""
    levels = (video.mean(dim=(1, 2, 3)) + 1) * 255 / 2
    return torch.round(levels / LEVEL_STEP).long().tolist()


def entry(path: str, num_frames: int, valid_frame_idx: int = 0, **overrides) -> dict:
    item = {
        "path": path,
        "caption": f"clip {path}",
        "control_signal_seq": ",".join(frame_tokens(num_frames)),
        "valid_frame_idx": valid_frame_idx,
    }
    item.update(overrides)
    return item


def make_dataset_dir(root: Path, clips: dict[str, tuple[int, float]], entries: list[dict] | None = None) -> Path:
    """Write grey clips {name: (frames, fps)} under root and an index of them; returns the index path."""
    for name, (num_frames, fps) in clips.items():
        write_mp4(grey_frames(num_frames), root / name, fps=fps)
    if entries is None:
        entries = [entry(name, num_frames) for name, (num_frames, _) in clips.items()]
    index_file = root / "index.json"
    index_file.write_text(json.dumps({"list": entries}))
    return index_file


def build_dataset(root: Path, clips: dict[str, tuple[int, float]], entries=None, **kwargs) -> VideoDataset:
    samples, problems = load_index(make_dataset_dir(root, clips, entries), root, VOCABULARY)
    assert problems == []
    options = dict(
        fps=10,
        height=32,
        width=40,
        frame_buckets=(9, 17, 33),
        temporal_compression=TEMPORAL_COMPRESSION,
        vocabulary=VOCABULARY,
    )
    options.update(kwargs)
    return VideoDataset(samples, **options)


# ---------------------------------------------------------------- video I/O


def test_write_mp4_writes_playable_h264_and_pads_odd_sizes(tmp_path):
    path = write_mp4(grey_frames(5, height=33, width=47), tmp_path / "odd.mp4", fps=8)
    assert read_video_info(path) == (5, 8.0, 34, 48)
    probe = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    )
    assert re.search(r"Video: h264 .*yuv420p", probe.stderr)
    assert [p.name for p in tmp_path.iterdir()] == ["odd.mp4"]


def test_write_mp4_accepts_torch_and_rejects_float(tmp_path):
    write_mp4(torch.from_numpy(grey_frames(3)), tmp_path / "t.mp4", fps=5)
    assert read_video_info(tmp_path / "t.mp4")[0] == 3
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(np.zeros((3, HEIGHT, WIDTH, 3), dtype=np.float32), tmp_path / "f.mp4", fps=5)


def test_write_mp4_interrupted_keeps_old_file_and_leaves_no_partial(tmp_path, monkeypatch):
    target = tmp_path / "clip.mp4"
    write_mp4(grey_frames(4), target, fps=5)
    before = target.read_bytes()
    real_write_frames = imageio_ffmpeg.write_frames
    monkeypatch.setattr(
        video_module.imageio_ffmpeg, "write_frames", lambda *a, **k: _Killing(real_write_frames(*a, **k))
    )
    with pytest.raises(KeyboardInterrupt):
        write_mp4(grey_frames(10), target, fps=5)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


class _Killing:
    """A frame writer that is killed after two frames, as a run stopped mid-write."""

    FRAMES_BEFORE_KILL = 2

    def __init__(self, writer):
        self.writer, self.frames = writer, 0

    def send(self, frame):
        if frame is not None:
            self.frames += 1
            if self.frames > self.FRAMES_BEFORE_KILL:
                self.writer.close()
                raise KeyboardInterrupt
        return self.writer.send(frame)

    def close(self):
        self.writer.close()


def test_draw_control_overlay_labels_corner_only_and_scales():
    frames = np.full((2, HEIGHT, WIDTH, 3), 100, dtype=np.uint8)
    out = draw_control_overlay(frames, ["DL", "NR"])
    assert (frames == 100).all(), "input must not be modified"
    changed = (out != 100).any(axis=(0, 3))
    rows, cols = np.nonzero(changed)
    # 5x7 font at 1 px per font pixel on 48x64, 1 px margin: "DL" spans 11 columns.
    assert rows.max() == 8 and cols.max() == 12
    assert (out[:, rows.max() + 1 :] == 100).all() and (out[:, :, cols.max() + 1 :] == 100).all()
    assert (out[:, :9, :13] == 255).any() and not np.array_equal(out[0], out[1])
    large = draw_control_overlay(np.full((1, 480, 720, 3), 100, dtype=np.uint8), ["D"])
    box_rows = np.nonzero((large[0] != 100).any(axis=(1, 2)))[0]
    assert box_rows.max() == 7 * 5 + 2 * 5 - 1  # 5 px per font pixel, 5 px margins
    with pytest.raises(ValueError, match="one label per frame"):
        draw_control_overlay(frames, ["D"])


def test_tensor_to_uint8_frames_maps_range_and_layout():
    video = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(4, 1, 1, 1).expand(4, 3, 2, 5)
    frames = tensor_to_uint8_frames(video)
    assert frames.shape == (4, 2, 5, 3) and frames.dtype == np.uint8
    assert frames[:, 0, 0, 0].tolist() == [0, 128, 255, 255]
    with pytest.raises(ValueError, match=r"\[F, 3, H, W\]"):
        tensor_to_uint8_frames(torch.zeros(3, 4, 2, 2))  # [C, F, H, W] by mistake


# ---------------------------------------------------------------- index checking


@pytest.fixture
def broken_index(tmp_path) -> Path:
    """An index in ``tmp_path / "root"`` with one entry of every kind of problem, and two usable entries."""
    root = tmp_path / "root"
    for name, frames in [
        ("good.mp4", 9),
        ("mismatch.mp4", 9),
        ("unknown.mp4", 9),
        ("late_start.mp4", 9),
        ("no_caption.mp4", 9),
        ("wrong_type.mp4", 9),
    ]:
        write_mp4(grey_frames(frames), root / name, fps=10)
    write_mp4(grey_frames(9), tmp_path / "elsewhere.mp4", fps=10)
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    # A copy cut short, as a crashed writer without an atomic rename leaves it; its header still
    # lists every frame.
    noise = np.random.default_rng(0).integers(0, 256, (30, HEIGHT, WIDTH, 3), dtype=np.uint8)
    full = write_mp4(noise, root / "full.mp4", fps=10).read_bytes()
    (root / "truncated.mp4").write_bytes(full[: len(full) * 2 // 3])
    tokens = frame_tokens(9)
    no_caption = entry("no_caption.mp4", 9)
    del no_caption["caption"]
    entries = [
        entry("good.mp4", 9),
        entry("missing.mp4", 9),
        entry("corrupt.mp4", 9),
        entry("truncated.mp4", 30),
        entry("mismatch.mp4", 9, control_signal_seq=",".join(tokens[:8])),
        entry("unknown.mp4", 9, control_signal_seq=",".join(tokens[:4] + ["X", "UPX"] + tokens[6:])),
        entry("late_start.mp4", 9, valid_frame_idx=9),
        no_caption,
        entry("wrong_type.mp4", 9, valid_frame_idx="0"),
        "not an object",
        entry("good.mp4", 9, valid_frame_idx=12),  # the same path as entry 0, with a problem of its own
        entry("../elsewhere.mp4", 9),
        entry(str(tmp_path / "elsewhere.mp4"), 9),
        entry(str(root / "good.mp4"), 9),  # absolute, but inside data_root
    ]
    index_file = root / "index.json"
    index_file.write_text(json.dumps({"list": entries}))
    return index_file


def test_load_index_reports_every_kind_of_problem_by_position_and_path(broken_index):
    samples, problems = load_index(broken_index, broken_index.parent, VOCABULARY)
    assert [(sample.position, Path(sample.relative_path).name) for sample in samples] == [
        (0, "good.mp4"),
        (13, "good.mp4"),
    ]
    good = samples[0]
    assert Path(good.path).is_absolute() and (good.num_frames, good.fps, good.height, good.width) == (
        9,
        10.0,
        HEIGHT,
        WIDTH,
    )
    assert good.frame_controls == frame_tokens(9)
    found = {(problem.position, problem.field): str(problem) for problem in problems}
    assert set(found) == {
        (1, "path"),
        (2, "path"),
        (3, "path"),
        (4, "control_signal_seq"),
        (5, "control_signal_seq"),
        (6, "valid_frame_idx"),
        (7, "caption"),
        (8, "valid_frame_idx"),
        (9, "entry"),
        (10, "valid_frame_idx"),
        (11, "path"),
        (12, "path"),
    }
    assert found[1, "path"].startswith("entry 1 (missing.mp4): path: file not found")
    assert "cannot be decoded" in found[2, "path"] and "cannot be decoded" in found[3, "path"]
    assert found[4, "control_signal_seq"] == (
        "entry 4 (mismatch.mp4): control_signal_seq: has 8 tokens but the video has 9 frames. "
        "Fix: write one token per video frame."
    )
    unknown = found[5, "control_signal_seq"]
    assert "'X' (first at frame 4)" in unknown and "'UPX' (first at frame 5)" in unknown and "'WAIT'" in unknown
    assert VOCABULARY_FILE in unknown, "the fix says how to give the footage its own vocabulary"
    assert "0..8" in found[6, "valid_frame_idx"]
    assert "is missing" in found[7, "caption"]
    assert "is '0' (str) but must be an integer" in found[8, "valid_frame_idx"]
    assert found[9, "entry"].startswith("entry 9: entry: is a str")
    assert found[10, "valid_frame_idx"].startswith("entry 10 (good.mp4): valid_frame_idx: is 12")
    for position in (11, 12):
        assert (
            "outside data_root" in found[position, "path"]
            and "--allow_paths_outside_data_root" in found[position, "path"]
        )

    allowed, problems = load_index(broken_index, broken_index.parent, VOCABULARY, allow_outside_data_root=True)
    assert [sample.position for sample in allowed] == [0, 11, 12, 13]
    assert all(problem.position not in (11, 12) for problem in problems)


def test_load_index_keeps_decoder_noise_off_the_terminal(broken_index, capfd):
    _, problems = load_index(broken_index, broken_index.parent, VOCABULARY)
    output = capfd.readouterr()
    assert output.out == "" and output.err == "", "decord's native log must not reach the terminal"
    corrupt = next(str(problem) for problem in problems if problem.position == 2)
    # decord's own reason, without its time stamp and source location
    assert corrupt.startswith("entry 2 (corrupt.mp4): path: cannot be decoded as a video (ERROR opening: ")
    assert ".cc:" not in corrupt and "\n" not in corrupt


def test_decoder_log_is_held_back_but_other_output_passes(capfd):
    def read():
        os.write(STDERR_FD, b"[07:33:08] /src/video/video_reader.cc:83: ERROR opening: x.mp4, Invalid data\n")
        os.write(STDERR_FD, b"[mov,mp4,m4a @ 0x55e8e7f41240] moov atom not found\n")
        os.write(STDERR_FD, b"a line of another thread\n")
        raise RuntimeError("Error reading x.mp4...")

    with pytest.raises(VideoDecodeError, match=r"^ERROR opening: x\.mp4, Invalid data$"):
        decode_quietly(read)
    assert capfd.readouterr().err == "a line of another thread\n"
    assert decode_quietly(lambda: 7) == 7 and capfd.readouterr().err == ""


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        ('{"clips": []}', 'no "list" key'),
        ('{"list": {}}', "not a list"),
        ('{"list": []}', '"list" is empty'),
    ],
)
def test_load_index_rejects_unusable_index_files(tmp_path, content, message):
    index_file = tmp_path / "index.json"
    if content is not None:
        index_file.write_text(content)
    with pytest.raises(IndexFormatError, match=message) as error:
        load_index(index_file, tmp_path, VOCABULARY)
    assert str(index_file) in str(error.value) and "Fix:" in str(error.value)


def test_load_index_takes_the_vocabulary_of_the_data_root(tmp_path):
    entries = [entry("a.mp4", 9), entry("a.mp4", 9, control_signal_seq=",".join(["JUMP"] * 9))]
    index_file = make_dataset_dir(tmp_path, {"a.mp4": (9, 10)}, entries)
    VOCABULARY.save(tmp_path / VOCABULARY_FILE)
    samples, problems = load_index(index_file, tmp_path)
    assert [sample.position for sample in samples] == [0]
    [problem] = problems
    assert problem.position == 1 and f"from {tmp_path / VOCABULARY_FILE}" in problem.fix


def test_load_index_without_vocabulary_accepts_any_game_keys_but_checks_their_form(tmp_path):
    """A stage without controls takes footage of any game: tokens are not checked against a vocabulary, the
    field may be absent, but a control log that is present must still give every frame one token."""
    no_controls = entry("a.mp4", 9)
    del no_controls["control_signal_seq"]
    entries = [
        entry("a.mp4", 9, control_signal_seq=",".join(["JUMP", "DUCK", "W"] * 3)),
        no_controls,
        entry("a.mp4", 9, control_signal_seq=",".join(["JUMP"] * 8)),
        entry("a.mp4", 9, control_signal_seq="JUMP,,DUCK,W,W,W,W,W,W"),
    ]
    samples, problems = load_index(make_dataset_dir(tmp_path, {"a.mp4": (9, 10)}, entries), tmp_path)
    assert [(sample.position, sample.frame_controls) for sample in samples] == [
        (0, ["JUMP", "DUCK", "W"] * 3),
        (1, None),
    ]
    assert [(problem.position, problem.field) for problem in problems] == [
        (2, "control_signal_seq"),
        (3, "control_signal_seq"),
    ]
    assert "has 8 tokens" in problems[0].reason and "empty token at frame 1" in problems[1].reason

    dataset = VideoDataset(samples, fps=10, height=32, width=40, frame_buckets=(9,), temporal_compression=4)
    assert "controls" not in dataset[1] and dataset[1]["video"].shape == (9, 3, 32, 40)
    with pytest.raises(DatasetError, match=r"entry 1 \(a\.mp4\): has no control_signal_seq"):
        VideoDataset(
            samples[1:], fps=10, height=32, width=40, frame_buckets=(9,), temporal_compression=4, vocabulary=VOCABULARY
        )
    _, problems = load_index(tmp_path / "index.json", tmp_path, VOCABULARY)  # with a vocabulary the field is required
    assert (1, "control_signal_seq") in {(problem.position, problem.field) for problem in problems}


def test_vocabulary_file_round_trips_and_mistakes_name_file_key_and_fix(tmp_path):
    path = VOCABULARY.save(tmp_path / VOCABULARY_FILE)
    loaded = load_vocabulary(path)
    assert loaded == VOCABULARY and loaded.source == str(path)
    assert json.loads(path.read_text()) == {"tokens": VOCABULARY.to_mapping(), "null_phrase": ""}
    cases = {
        '{"tokens": {"UP": "Climb.", "UP": "Rise."}}': "keys ['UP'] appear more than once",
        '{"token": {"UP": "Climb."}}': "'token' is not a key of this file. Fix: remove it; did you mean 'tokens'?",
        '{"tokens": {}}': "'tokens' is {}. Fix: map each token to its phrase",
        '{"tokens": {"UP": 1}}': "tokens.UP: the phrase is 1",
        '{"tokens": {"UP": "Climb.", "DOWN": "Climb."}}': "give every token its own phrase",
        '{"tokens": {"UP": "Climb."}, "null_phrase": null}': "'null_phrase' is null",
        '["UP"]': "not an object",
        "{": "not valid JSON",
    }
    for content, message in cases.items():
        path.write_text(content)
        with pytest.raises(ControlError) as error:
            load_vocabulary(path)
        assert str(path) in str(error.value) and message in str(error.value), str(error.value)


def test_validate_cli_prints_problems_and_exit_codes(broken_index, capsys):
    root = broken_index.parent
    args = ["--data_root", str(root), "--index_file", str(broken_index)]
    VOCABULARY.save(root / VOCABULARY_FILE)
    assert validate_main(args) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 13 and lines[-1].startswith("FAILED") and "2 usable clips, 12 problems" in lines[-1]
    assert f"controls checked against {root / VOCABULARY_FILE}" in lines[-1]
    assert lines[1].startswith("entry 2 (corrupt.mp4): path: cannot be decoded")
    assert validate_main(args + ["--allow_paths_outside_data_root"]) == 1
    assert "4 usable clips, 10 problems" in capsys.readouterr().out

    good_index = root / "good.json"
    good_index.write_text(json.dumps({"list": [entry("good.mp4", 9)]}))
    good_args = ["--data_root", str(root), "--index_file", str(good_index)]
    assert validate_main(good_args + ["--min_frames", "10"]) == 1
    assert "entry 0 (good.mp4): valid_frame_idx: leaves 9 usable frames" in capsys.readouterr().out
    other = ControlVocabulary(("JUMP",), ("The player jumps.",))
    assert validate_main(good_args + ["--vocabulary", str(other.save(root.parent / "other.json"))]) == 1
    assert "unknown control tokens 'UP'" in capsys.readouterr().out
    (root / VOCABULARY_FILE).unlink()
    script = subprocess.run(
        [sys.executable, "data/validate_index.py", *good_args], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert script.returncode == 0 and script.stdout.startswith("OK"), script.stdout + script.stderr
    assert "controls checked for one token per frame only" in script.stdout


# ---------------------------------------------------------------- dataset


def test_dataset_item_shapes_ranges_and_controls(tmp_path):
    dataset = build_dataset(tmp_path, {"long.mp4": (40, 10), "mid.mp4": (20, 10)})
    assert dataset.buckets == [33, 17] and dataset.skipped == []
    item = dataset[0]
    assert item["video"].shape == (33, 3, 32, 40) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    assert decoded_frame_numbers(item["video"]) == list(range(33))
    expected_tokens = [frame_tokens(40)[k] for k in range(0, 33, TEMPORAL_COMPRESSION)]
    assert item["control_tokens"] == expected_tokens and len(expected_tokens) == (33 - 1) // TEMPORAL_COMPRESSION + 1
    assert item["controls"].dtype == torch.long and item["controls"].tolist() == VOCABULARY.encode(expected_tokens)
    assert (item["bucket"], item["caption"], Path(item["path"]).name) == (33, "clip long.mp4", "long.mp4")

    batch = next(
        iter(DataLoader(dataset, batch_sampler=BucketBatchSampler(dataset, 1, seed=0), collate_fn=collate_batch))
    )
    assert batch["video"].shape[0] == 1 and batch["controls"].shape == (
        1,
        (batch["bucket"] - 1) // TEMPORAL_COMPRESSION + 1,
    )
    assert isinstance(batch["control_tokens"][0], list)


def test_dataset_resizes_keeping_aspect_then_crops_center(tmp_path):
    frames = np.zeros((9, 48, 96, 3), dtype=np.uint8)
    frames[:, :, :24, 0] = 255  # red left quarter
    frames[:, :, 24:72, 1] = 255  # green middle half
    frames[:, :, 72:, 2] = 255  # blue right quarter
    write_mp4(frames, tmp_path / "wide.mp4", fps=10)
    (tmp_path / "index.json").write_text(json.dumps({"list": [entry("wide.mp4", 9)]}))
    samples, _ = load_index(tmp_path / "index.json", tmp_path, VOCABULARY)
    video = VideoDataset(samples, fps=10, height=24, width=24, frame_buckets=(9,), temporal_compression=4)[0]["video"]
    assert video.shape == (9, 3, 24, 24)
    red, green, blue = video.mean(dim=(0, 2, 3))
    assert green > 0.8 and red < -0.8 and blue < -0.8


@pytest.mark.parametrize(
    "source_fps, valid_frame_idx, expected",
    [
        (20, 0, list(range(0, 33, 2))),  # every second frame
        (20, 5, list(range(5, 38, 2))),  # from the first usable frame
        (15, 0, [0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 23, 24]),  # nearest frame in time
    ],
)
def test_dataset_resamples_fps_by_time(tmp_path, source_fps, valid_frame_idx, expected):
    dataset = build_dataset(
        tmp_path, {"clip.mp4": (40, source_fps)}, entries=[entry("clip.mp4", 40, valid_frame_idx)], frame_buckets=(17,)
    )
    assert dataset.frame_indices(0) == expected
    item = dataset[0]
    assert decoded_frame_numbers(item["video"]) == expected
    assert item["control_tokens"] == [frame_tokens(40)[k] for k in expected[::TEMPORAL_COMPRESSION]]


def test_dataset_random_start_keeps_frames_and_controls_aligned(tmp_path):
    dataset = build_dataset(tmp_path, {"clip.mp4": (40, 10)}, random_start=True)
    torch.manual_seed(0)
    starts = set()
    for _ in range(8):
        item = dataset[0]
        numbers = decoded_frame_numbers(item["video"])
        assert numbers == list(range(numbers[0], numbers[0] + 33)) and 0 <= numbers[0] <= 40 - 33
        assert item["control_tokens"] == [frame_tokens(40)[k] for k in numbers[::TEMPORAL_COMPRESSION]]
        starts.add(numbers[0])
    assert len(starts) > 1


def test_dataset_refuses_source_slower_than_fps_and_bad_buckets(tmp_path):
    samples, _ = load_index(make_dataset_dir(tmp_path, {"slow.mp4": (40, 10)}), tmp_path, VOCABULARY)
    with pytest.raises(DatasetError, match=r"entry 0 \(slow\.mp4\) is 10 fps"):
        VideoDataset(samples, fps=20, height=32, width=32, frame_buckets=(9,), temporal_compression=4)
    with pytest.raises(DatasetError, match="4k\\+1"):
        VideoDataset(samples, fps=10, height=32, width=32, frame_buckets=(9, 16), temporal_compression=4)


NTSC_FPS = 30000 / 1001  # 29.97
# Clips of NTSC footage this long read at 30 fps by time would repeat a frame (one every 1000 frames).
LONG_NTSC_FRAMES = 1200


def ntsc_sample(num_frames: int) -> Sample:
    """A checked sample of 29.97 fps footage; its file is never read (the dataset picks frames without decoding)."""
    return Sample(0, "/footage/ntsc.mp4", "ntsc.mp4", "a clip", None, 0, num_frames, NTSC_FPS, HEIGHT, WIDTH)


def test_ntsc_footage_trains_at_its_whole_rate_one_frame_after_another():
    """29.97 fps is 30 fps, as players show it: a long clip gives every frame once, in order, with no repeat."""
    assert footage_fps([ntsc_sample(LONG_NTSC_FRAMES)]) == 30
    assert footage_fps([ntsc_sample(LONG_NTSC_FRAMES), dataclasses.replace(ntsc_sample(9), fps=29.0)]) == 29
    dataset = VideoDataset(
        [ntsc_sample(LONG_NTSC_FRAMES)],
        fps=30,
        height=HEIGHT,
        width=WIDTH,
        frame_buckets=(LONG_NTSC_FRAMES - TEMPORAL_COMPRESSION + 1,),
        temporal_compression=TEMPORAL_COMPRESSION,
    )
    assert dataset.frame_indices(0, offset=TEMPORAL_COMPRESSION - 1) == list(
        range(TEMPORAL_COMPRESSION - 1, LONG_NTSC_FRAMES)
    )


@pytest.mark.parametrize(
    "settings, expected",
    [
        (dict(height=0, width=-8), r"^args.height = 0, args.width = -8: training clips need a positive frame rate"),
        (dict(temporal_compression=0), r"^the VAE's temporal_compression_ratio is 0.*vae/config.json"),
        (dict(frame_buckets=(16,)), r"^args.frame_buckets = \[16\]: every bucket must be 4k\+1 frames"),
        (dict(fps=31), r"args.fps = 31\): entry 0 \(ntsc.mp4\) is 29.97 fps. Fix: lower args.fps to at most 30"),
    ],
)
def test_dataset_errors_name_the_setting_and_the_fix(settings, expected):
    options = dict(fps=30, height=HEIGHT, width=WIDTH, frame_buckets=(9,), temporal_compression=TEMPORAL_COMPRESSION)
    with pytest.raises(DatasetError, match=expected):
        VideoDataset([ntsc_sample(LONG_NTSC_FRAMES)], **{**options, **settings})


def test_dataset_skips_short_clips_and_fails_if_none_fits(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        dataset = build_dataset(tmp_path, {"long.mp4": (20, 10), "short.mp4": (12, 10)}, frame_buckets=(17,))
    assert len(dataset) == 1 and dataset.buckets == [17]
    [skipped] = dataset.skipped
    assert str(skipped) == (
        "entry 1 (short.mp4): valid_frame_idx: leaves 12 frames at args.fps = 10 from frame 0 (of 12 at 10 fps in the "
        "file), but the shortest of args.frame_buckets is 17. Fix: record a longer clip, lower valid_frame_idx, or "
        "add a shorter bucket to args.frame_buckets."
    )
    assert "short.mp4" in caplog.text
    with pytest.raises(DatasetError, match=r"none of the 1 clips.*\n.*short\.mp4"):
        VideoDataset(
            [load_index(tmp_path / "index.json", tmp_path, VOCABULARY)[0][1]],
            fps=10,
            height=32,
            width=32,
            frame_buckets=(17,),
            temporal_compression=4,
        )


# ---------------------------------------------------------------- bucket batches


class _Buckets:
    """The only thing BucketBatchSampler reads from a dataset."""

    def __init__(self, buckets):
        self.buckets = buckets


BUCKETS = _Buckets([17] * 7 + [33] * 5 + [65] * 3)


def _epoch(sampler: BucketBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_bucket_batches_hold_one_bucket_and_are_reproducible_per_seed_and_epoch():
    sampler = BucketBatchSampler(BUCKETS, batch_size=2, seed=7)
    batches = _epoch(sampler, 0)
    assert len(batches) == len(sampler) == 3 + 2 + 1
    assert all(len(batch) == 2 and len({BUCKETS.buckets[i] for i in batch}) == 1 for batch in batches)
    flat = [i for batch in batches for i in batch]
    assert len(set(flat)) == len(flat)
    assert _epoch(BucketBatchSampler(BUCKETS, batch_size=2, seed=7), 0) == batches
    assert _epoch(sampler, 1) != batches and _epoch(sampler, 0) == batches
    assert _epoch(BucketBatchSampler(BUCKETS, batch_size=2, seed=8), 0) != batches


def test_bucket_batches_without_drop_last_or_shuffle_cover_everything():
    sampler = BucketBatchSampler(BUCKETS, batch_size=2, seed=0, drop_last=False)
    batches = _epoch(sampler, 3)
    assert len(batches) == len(sampler) == 4 + 3 + 2
    assert sorted(i for batch in batches for i in batch) == list(range(len(BUCKETS.buckets)))
    ordered = BucketBatchSampler(BUCKETS, batch_size=3, seed=0, shuffle=False)
    assert _epoch(ordered, 0) == _epoch(ordered, 5) == [[0, 1, 2], [3, 4, 5], [7, 8, 9], [12, 13, 14]]
    with pytest.raises(
        DatasetError,
        match=r"no frame bucket holds a batch of args.train_batch_size = 8 clips \(clips per bucket: \{17: 7, 33: 5, "
        r"65: 3\}\). Fix: lower args.train_batch_size, or add clips",
    ):
        BucketBatchSampler(BUCKETS, batch_size=8, seed=0)
