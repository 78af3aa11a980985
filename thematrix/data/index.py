"""Reading and checking an index file of clips with per-frame controls.

Index format (JSON)::

    {"list": [{"path": "clip.mp4", "caption": "...", "control_signal_seq": "W,W,JUMP,...",
               "valid_frame_idx": 0}, ...]}

``path`` is relative to ``data_root`` and must stay inside it (unless allowed);
``control_signal_seq`` holds one token per video frame of the file; ``valid_frame_idx`` is the
first usable frame. Every bad entry becomes a ``Problem`` naming its position in the list, its
path, the field and the fix, and is left out: nothing is guessed or filled in, so the model never
trains on made-up controls.

Controls are checked against a vocabulary: the one passed, else the data root's ``vocabulary.json``.
Without either (a stage whose model has no controls, footage of any game), ``control_signal_seq``
may be absent; when present it must still hold one non-empty token per video frame, so the same
index serves the later stages.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from thematrix.controls import VOCABULARY_FILE, ControlVocabulary, data_root_vocabulary, split_controls
from thematrix.data.decoder import VideoDecodeError, decode_quietly
from thematrix.video import read_video_info

INDEX_LIST_KEY = "list"
CONTROLS_FIELD = "control_signal_seq"
# Field name -> (accepted type, what to write there).
INDEX_FIELDS = {
    "path": (str, 'the video\'s path relative to data_root, e.g. "videos/clip_000.mp4"'),
    "caption": (str, "a text description of the clip"),
    CONTROLS_FIELD: (str, 'one comma-separated control token per video frame, e.g. "W,W,JUMP"'),
    "valid_frame_idx": (int, "the index of the first usable frame (0 if all frames are usable)"),
}
_TYPE_NAMES = {str: "a string", int: "an integer"}
# How many unknown tokens to name in one message before summarising the rest.
MAX_TOKENS_LISTED = 5


def describe_entry(position: int, path: str | None) -> str:
    """How messages name an index entry: its position in the list, and its path when it has one."""
    return f"entry {position}" + (f" ({path})" if path is not None else "")


class IndexFormatError(ValueError):
    """The index file as a whole cannot be read: missing, not JSON, or not ``{"list": [...]}``."""


@dataclass
class Sample:
    """One usable clip: its index entry, resolved and checked against the video file.

    ``frame_controls`` is None for an entry without controls (allowed only when no vocabulary applies).
    """

    position: int
    path: str
    relative_path: str
    caption: str
    frame_controls: list[str] | None
    valid_frame_idx: int
    num_frames: int
    fps: float
    height: int
    width: int

    @property
    def entry(self) -> str:
        return describe_entry(self.position, self.relative_path)


@dataclass
class Problem:
    """Why one index entry was left out, and how to fix it.

    ``position`` is the entry's place in the index's list (two entries may share a path);
    ``path`` is None for an entry that has no usable path.
    """

    position: int
    path: str | None
    field: str
    reason: str
    fix: str

    @property
    def entry(self) -> str:
        return describe_entry(self.position, self.path)

    def __str__(self) -> str:
        return f"{self.entry}: {self.field}: {self.reason}. Fix: {self.fix}."


def _read_entries(index_file: Path) -> list:
    if not index_file.is_file():
        raise IndexFormatError(
            f"{index_file}: index file not found (looked for {os.path.abspath(index_file)}). "
            "Fix: pass the path of an existing index JSON."
        )
    example = (
        f'{{"{INDEX_LIST_KEY}": [{{"path": ..., "caption": ..., "{CONTROLS_FIELD}": ..., '
        '"valid_frame_idx": ...}, ...]}'
    )
    try:
        content = json.loads(index_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IndexFormatError(f"{index_file}: not valid JSON ({error}). Fix: write the index as {example}.") from None
    if not isinstance(content, dict) or INDEX_LIST_KEY not in content:
        raise IndexFormatError(
            f'{index_file}: no "{INDEX_LIST_KEY}" key at the top level. Fix: put the entries in '
            f'{{"{INDEX_LIST_KEY}": [...]}}.'
        )
    entries = content[INDEX_LIST_KEY]
    if not isinstance(entries, list):
        raise IndexFormatError(
            f'{index_file}: "{INDEX_LIST_KEY}" is a {type(entries).__name__}, not a list. '
            "Fix: make it a list of entry objects."
        )
    if not entries:
        raise IndexFormatError(f'{index_file}: "{INDEX_LIST_KEY}" is empty. Fix: add one entry per clip: {example}.')
    return entries


def _field_problems(entry, position: int, path: str | None, controls_required: bool) -> list[Problem]:
    """Missing fields and fields of the wrong type (a bool is not an index)."""
    if not isinstance(entry, dict):
        return [
            Problem(
                position,
                None,
                "entry",
                f"is a {type(entry).__name__}, not an object",
                f"write each entry as an object with fields {list(INDEX_FIELDS)}",
            )
        ]
    problems = []
    for field, (kind, meaning) in INDEX_FIELDS.items():
        if field not in entry:
            if field != CONTROLS_FIELD or controls_required:
                problems.append(Problem(position, path, field, "is missing", f"add {field!r}: {meaning}"))
        elif not isinstance(entry[field], kind) or isinstance(entry[field], bool):
            problems.append(
                Problem(
                    position,
                    path,
                    field,
                    f"is {entry[field]!r} ({type(entry[field]).__name__}) but must be {_TYPE_NAMES[kind]}",
                    f"write {meaning}",
                )
            )
    if isinstance(entry.get("path"), str) and not entry["path"].strip():
        problems.append(Problem(position, None, "path", "is empty", f"write {INDEX_FIELDS['path'][1]}"))
    return problems


def _unknown_token_fix(vocabulary: ControlVocabulary) -> str:
    origin = f" (from {vocabulary.source})" if vocabulary.source else ""
    return (
        f"use only the tokens of the vocabulary{origin} {list(vocabulary.tokens)}, or give the footage its own "
        f"vocabulary: a {VOCABULARY_FILE} in data_root (format: data/README.md)"
    )


def _control_problems(
    position: int, path: str | None, control_string: str, vocabulary: ControlVocabulary | None
) -> tuple[list[str] | None, list[Problem]]:
    """The per-frame tokens (None when the string cannot be split into them) and what is wrong."""
    tokens = split_controls(control_string)
    empty = [frame for frame, token in enumerate(tokens) if not token]
    if empty:
        return None, [
            Problem(
                position,
                path,
                CONTROLS_FIELD,
                f"has an empty token at frame {empty[0]} ({len(empty)} in all)",
                "separate tokens with single commas and give every frame a token"
                + (f" from {list(vocabulary.tokens)}" if vocabulary is not None else ""),
            )
        ]
    if vocabulary is None:
        return tokens, []
    known = set(vocabulary.tokens)
    unknown: dict[str, int] = {}
    for frame, token in enumerate(tokens):
        if token not in known:
            unknown.setdefault(token, frame)
    if not unknown:
        return tokens, []
    listed = ", ".join(
        f"{token!r} (first at frame {frame})" for token, frame in list(unknown.items())[:MAX_TOKENS_LISTED]
    )
    more = f" and {len(unknown) - MAX_TOKENS_LISTED} more" if len(unknown) > MAX_TOKENS_LISTED else ""
    return tokens, [
        Problem(
            position, path, CONTROLS_FIELD, f"has unknown control tokens {listed}{more}", _unknown_token_fix(vocabulary)
        )
    ]


def _check_entry(
    entry, position: int, data_root: Path, vocabulary: ControlVocabulary | None, allow_outside_data_root: bool
) -> tuple[Sample | None, list[Problem]]:
    has_path = isinstance(entry, dict) and isinstance(entry.get("path"), str) and bool(entry["path"].strip())
    path = entry["path"] if has_path else None
    problems = _field_problems(entry, position, path, controls_required=vocabulary is not None)
    tokens = None
    if isinstance(entry, dict) and isinstance(entry.get(CONTROLS_FIELD), str):
        tokens, control_problems = _control_problems(position, path, entry[CONTROLS_FIELD], vocabulary)
        problems += control_problems
    if not has_path:
        return None, problems

    video_path = Path(os.path.abspath(data_root / path))
    if not allow_outside_data_root and not video_path.is_relative_to(os.path.abspath(data_root)):
        problems.append(
            Problem(
                position,
                path,
                "path",
                f"resolves to {video_path}, outside data_root ({data_root})",
                "move the clip under data_root and write its path relative to it, or allow paths outside data_root "
                "(validator: --allow_paths_outside_data_root)",
            )
        )
        return None, problems
    if not video_path.is_file():
        problems.append(
            Problem(
                position,
                path,
                "path",
                f"file not found at {video_path}",
                f"check data_root ({data_root}) and the entry's path, or remove the entry",
            )
        )
        return None, problems
    try:
        num_frames, fps, height, width = decode_quietly(lambda: read_video_info(video_path))
    except VideoDecodeError as error:
        problems.append(
            Problem(
                position,
                path,
                "path",
                f"cannot be decoded as a video ({error})",
                "re-encode the file (e.g. H.264 mp4) or remove the entry",
            )
        )
        return None, problems

    if tokens is not None and len(tokens) != num_frames:
        problems.append(
            Problem(
                position,
                path,
                CONTROLS_FIELD,
                f"has {len(tokens)} tokens but the video has {num_frames} frames",
                "write one token per video frame",
            )
        )
    start = entry.get("valid_frame_idx")
    if isinstance(start, int) and not isinstance(start, bool) and not 0 <= start < num_frames:
        problems.append(
            Problem(
                position,
                path,
                "valid_frame_idx",
                f"is {start} but the video has frames 0..{num_frames - 1}",
                "set it to the index of the first usable frame, between 0 and the last frame",
            )
        )
    if problems:
        return None, problems
    return Sample(
        position=position,
        path=str(video_path),
        relative_path=path,
        caption=entry["caption"],
        frame_controls=tokens,
        valid_frame_idx=start,
        num_frames=num_frames,
        fps=fps,
        height=height,
        width=width,
    ), []


def load_index(
    index_file: str | os.PathLike,
    data_root: str | os.PathLike,
    vocabulary: ControlVocabulary | None = None,
    *,
    allow_outside_data_root: bool = False,
) -> tuple[list[Sample], list[Problem]]:
    """Read ``index_file`` and check every entry against its video; return usable samples and problems.

    Controls are checked against ``vocabulary``, or when it is None against ``data_root``'s
    ``vocabulary.json``; without either, only their form (one non-empty token per frame, when present).
    An entry whose path leads outside ``data_root`` is a problem unless ``allow_outside_data_root``.
    Raises ``IndexFormatError`` when the file itself is unusable or lists nothing, and ``ControlError``
    for a broken ``vocabulary.json``; a bad entry only adds a ``Problem`` (all of its problems, not
    just the first) and is left out.
    """
    index_file, data_root = Path(index_file), Path(data_root)
    entries = _read_entries(index_file)
    if not data_root.is_dir():
        raise IndexFormatError(
            f"{data_root}: data_root is not a directory. Fix: pass the folder that the index's paths "
            f"are relative to (the index is {index_file})."
        )
    if vocabulary is None:
        vocabulary = data_root_vocabulary(data_root)
    samples, problems = [], []
    for position, entry in enumerate(entries):
        sample, entry_problems = _check_entry(entry, position, data_root, vocabulary, allow_outside_data_root)
        problems += entry_problems
        if sample is not None:
            samples.append(sample)
    return samples, problems
