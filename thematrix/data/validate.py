"""Check an index file and its videos before training: ``python -m thematrix.data.validate``.

Prints every problem (path, field, reason, fix) and a summary; exits 1 if there is any, so it
can gate a training launch or CI.
"""

from __future__ import annotations

import argparse
import sys

from thematrix.controls import (
    CONTROL_SEPARATOR,
    DEFAULT_VOCABULARY,
    ControlError,
    ControlVocabulary,
)
from thematrix.data.index import IndexFormatError, Problem, load_index

EXIT_OK = 0
EXIT_PROBLEMS = 1


def _vocabulary(control_tokens: str | None) -> ControlVocabulary:
    if control_tokens is None:
        return DEFAULT_VOCABULARY
    tokens = tuple(token.strip() for token in control_tokens.split(CONTROL_SEPARATOR))
    # Validation only compares tokens; the phrases matter for embedding, not here.
    return ControlVocabulary(tokens, tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", required=True, help="folder that the index's paths are relative to")
    parser.add_argument(
        "--index_file", required=True,
        help='index JSON: {"list": [{"path", "caption", "control_signal_seq", "valid_frame_idx"}, ...]}',
    )
    parser.add_argument(
        "--min_frames", type=int, default=1,
        help="report clips with fewer usable frames (from valid_frame_idx, at the file's own fps); "
        "e.g. the smallest frame bucket times the file fps / training fps",
    )
    parser.add_argument(
        "--control_tokens", default=None,
        help=f"comma-separated tokens of the game's vocabulary (default: {','.join(DEFAULT_VOCABULARY.tokens)})",
    )
    args = parser.parse_args(argv)

    try:
        vocabulary = _vocabulary(args.control_tokens)
        samples, problems = load_index(args.index_file, args.data_root, vocabulary)
    except (IndexFormatError, ControlError) as error:
        print(f"error: {error}")
        return EXIT_PROBLEMS

    usable = []
    for sample in samples:
        frames = sample.num_frames - sample.valid_frame_idx
        if frames < args.min_frames:
            problems.append(Problem(
                sample.relative_path, "valid_frame_idx",
                f"leaves {frames} usable frames (of {sample.num_frames}) but --min_frames is {args.min_frames}",
                "record a longer clip, lower valid_frame_idx, or remove the entry",
            ))
        else:
            usable.append(sample)
    for problem in problems:
        print(problem)
    status = "FAILED" if problems else "OK"
    print(f"{status}: {args.index_file}: {len(usable)} usable clips, {len(problems)} problems")
    return EXIT_PROBLEMS if problems else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
