"""Reading and checking an index file of clips with per-frame controls.

Index format (JSON)::

    {"list": [{"path": "clip.mp4", "caption": "...", "control_signal_seq": "D,D,DL,...",
               "valid_frame_idx": 0}, ...]}

``path`` is relative to ``data_root``; ``control_signal_seq`` holds one token per video frame
of the file; ``valid_frame_idx`` is the first usable frame. Every bad entry becomes a
``Problem`` naming the path, the field and the fix, and is left out: nothing is guessed or
filled in, so the model never trains on made-up controls.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from thematrix.controls import CONTROL_SEPARATOR, ControlVocabulary
from thematrix.video import read_video_info

INDEX_LIST_KEY = "list"
# Field name -> (accepted type, what to write there).
INDEX_FIELDS = {
    "path": (str, "the video's path relative to data_root, e.g. \"videos/clip_000.mp4\""),
    "caption": (str, "a text description of the clip"),
    "control_signal_seq": (str, "one comma-separated control token per video frame, e.g. \"D,D,DL\""),
    "valid_frame_idx": (int, "the index of the first usable frame (0 if all frames are usable)"),
}
# decord prefixes its errors with "[12:00:00] /path/to/source.cc:83: "; users need only the message.
_DECORD_LOCATION_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")
_TYPE_NAMES = {str: "a string", int: "an integer"}
# How many unknown tokens to name in one message before summarising the rest.
MAX_TOKENS_LISTED = 5


class IndexFormatError(ValueError):
    """The index file as a whole cannot be read: missing, not JSON, or not ``{"list": [...]}``."""


@dataclass
class Sample:
    """One usable clip: its index entry, resolved and checked against the video file."""

    path: str
    relative_path: str
    caption: str
    frame_controls: list[str]
    valid_frame_idx: int
    num_frames: int
    fps: float
    height: int
    width: int


@dataclass
class Problem:
    """Why one index entry was left out, and how to fix it."""

    path: str
    field: str
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.field}: {self.reason}. Fix: {self.fix}."


def _read_entries(index_file: Path) -> list:
    if not index_file.is_file():
        raise IndexFormatError(
            f"{index_file}: index file not found. Fix: pass the path of an existing index JSON "
            "(index_file is resolved against the current directory, not data_root)."
        )
    try:
        content = json.loads(index_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IndexFormatError(
            f"{index_file}: not valid JSON ({error}). Fix: write the index as "
            f'{{"{INDEX_LIST_KEY}": [{{"path": ..., "caption": ..., "control_signal_seq": ..., '
            '"valid_frame_idx": ...}, ...]}.'
        ) from None
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
    return entries


def _field_problems(entry, name: str) -> list[Problem]:
    """Missing fields and fields of the wrong type (a bool is not an index)."""
    if not isinstance(entry, dict):
        return [Problem(name, "entry", f"is a {type(entry).__name__}, not an object",
                        f"write each entry as an object with fields {list(INDEX_FIELDS)}")]
    problems = []
    for field, (kind, meaning) in INDEX_FIELDS.items():
        if field not in entry:
            problems.append(Problem(name, field, "is missing", f"add {field!r}: {meaning}"))
        elif not isinstance(entry[field], kind) or isinstance(entry[field], bool):
            problems.append(Problem(
                name, field, f"is {entry[field]!r} ({type(entry[field]).__name__}) but must be {_TYPE_NAMES[kind]}",
                f"write {meaning}",
            ))
    if isinstance(entry.get("path"), str) and not entry["path"].strip():
        problems.append(Problem(name, "path", "is empty", f"write {INDEX_FIELDS['path'][1]}"))
    return problems


def _control_problems(
    name: str, control_string: str, vocabulary: ControlVocabulary
) -> tuple[list[str] | None, list[Problem]]:
    """The per-frame tokens (None when the string cannot be split into them) and what is wrong."""
    tokens = [token.strip() for token in control_string.split(CONTROL_SEPARATOR)]
    empty = [frame for frame, token in enumerate(tokens) if not token]
    if empty:
        return None, [Problem(
            name, "control_signal_seq", f"has an empty token at frame {empty[0]} ({len(empty)} in all)",
            f"separate tokens with single commas and give every frame a token from {list(vocabulary.tokens)}",
        )]
    known = set(vocabulary.tokens)
    unknown: dict[str, int] = {}
    for frame, token in enumerate(tokens):
        if token not in known:
            unknown.setdefault(token, frame)
    if not unknown:
        return tokens, []
    listed = ", ".join(f"{token!r} (first at frame {frame})" for token, frame in list(unknown.items())[:MAX_TOKENS_LISTED])
    more = f" and {len(unknown) - MAX_TOKENS_LISTED} more" if len(unknown) > MAX_TOKENS_LISTED else ""
    return tokens, [Problem(
        name, "control_signal_seq", f"has unknown control tokens {listed}{more}",
        f"use only the vocabulary's tokens {list(vocabulary.tokens)}, or train with a vocabulary that has these",
    )]


def _check_entry(
    entry, position: int, data_root: Path, vocabulary: ControlVocabulary
) -> tuple[Sample | None, list[Problem]]:
    has_path = isinstance(entry, dict) and isinstance(entry.get("path"), str) and bool(entry["path"].strip())
    name = entry["path"] if has_path else f"entry #{position}"
    problems = _field_problems(entry, name)
    tokens = None
    if isinstance(entry, dict) and isinstance(entry.get("control_signal_seq"), str):
        tokens, control_problems = _control_problems(name, entry["control_signal_seq"], vocabulary)
        problems += control_problems
    if not has_path:
        return None, problems

    video_path = Path(os.path.abspath(data_root / entry["path"]))
    if not video_path.is_file():
        problems.append(Problem(name, "path", f"file not found at {video_path}",
                                f"check data_root ({data_root}) and the entry's path, or remove the entry"))
        return None, problems
    try:
        num_frames, fps, height, width = read_video_info(video_path)
    except Exception as error:  # decord raises several types (DECORDError, RuntimeError, AssertionError)
        message = str(error).strip().splitlines()
        reason = _DECORD_LOCATION_PREFIX.sub("", message[0]) if message else type(error).__name__
        problems.append(Problem(name, "path", f"cannot be decoded as a video ({reason})",
                                "re-encode the file (e.g. H.264 mp4) or remove the entry"))
        return None, problems

    if tokens is not None and len(tokens) != num_frames:
        problems.append(Problem(
            name, "control_signal_seq", f"has {len(tokens)} tokens but the video has {num_frames} frames",
            "write one token per video frame",
        ))
    start = entry.get("valid_frame_idx")
    if isinstance(start, int) and not isinstance(start, bool) and not 0 <= start < num_frames:
        problems.append(Problem(
            name, "valid_frame_idx", f"is {start} but the video has frames 0..{num_frames - 1}",
            "set it to the index of the first usable frame, between 0 and the last frame",
        ))
    if problems:
        return None, problems
    return Sample(
        path=str(video_path), relative_path=entry["path"], caption=entry["caption"], frame_controls=tokens,
        valid_frame_idx=start, num_frames=num_frames, fps=fps, height=height, width=width,
    ), []


def load_index(
    index_file: str | os.PathLike, data_root: str | os.PathLike, vocabulary: ControlVocabulary
) -> tuple[list[Sample], list[Problem]]:
    """Read ``index_file`` and check every entry against its video; return usable samples and problems.

    Raises ``IndexFormatError`` when the file itself is unusable; a bad entry only adds a
    ``Problem`` (all of its problems, not just the first) and is left out.
    """
    index_file, data_root = Path(index_file), Path(data_root)
    entries = _read_entries(index_file)
    if not data_root.is_dir():
        raise IndexFormatError(
            f"{data_root}: data_root is not a directory. Fix: pass the folder that the index's paths "
            f"are relative to (the index is {index_file})."
        )
    samples, problems = [], []
    for position, entry in enumerate(entries):
        sample, entry_problems = _check_entry(entry, position, data_root, vocabulary)
        problems += entry_problems
        if sample is not None:
            samples.append(sample)
    return samples, problems
