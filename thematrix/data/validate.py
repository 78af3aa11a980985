"""Check an index file and its videos before training: ``python -m thematrix.data.validate``.

Prints every problem (entry position and path, field, reason, fix) and a summary; exits 1 if there
is any, so it can gate a training launch or CI. Controls are checked against ``--vocabulary``, else
the data root's ``vocabulary.json``; without either, only their form is checked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from thematrix.controls import VOCABULARY_FILE, ControlError, data_root_vocabulary, load_vocabulary
from thematrix.data.index import IndexFormatError, Problem, load_index

EXIT_OK = 0
EXIT_PROBLEMS = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", required=True, help="folder that the index's paths are relative to")
    parser.add_argument(
        "--index_file",
        required=True,
        help='index JSON: {"list": [{"path", "caption", "control_signal_seq", "valid_frame_idx"}, ...]}',
    )
    parser.add_argument(
        "--min_frames",
        type=int,
        default=1,
        help="report clips with fewer usable frames (from valid_frame_idx, at the file's own fps); "
        "e.g. the smallest frame bucket times the file fps / training fps",
    )
    parser.add_argument(
        "--vocabulary",
        type=Path,
        default=None,
        help=f"the game's vocabulary file (default: DATA_ROOT/{VOCABULARY_FILE} if there is one; "
        "format: data/README.md)",
    )
    parser.add_argument(
        "--allow_paths_outside_data_root",
        action="store_true",
        help="accept entries whose path leads outside data_root (../ or absolute paths elsewhere)",
    )
    args = parser.parse_args(argv)

    try:
        vocabulary = load_vocabulary(args.vocabulary) if args.vocabulary else data_root_vocabulary(args.data_root)
        samples, problems = load_index(
            args.index_file, args.data_root, vocabulary, allow_outside_data_root=args.allow_paths_outside_data_root
        )
    except (IndexFormatError, ControlError) as error:
        print(f"error: {error}")
        return EXIT_PROBLEMS

    usable = []
    for sample in samples:
        frames = sample.num_frames - sample.valid_frame_idx
        if frames < args.min_frames:
            problems.append(
                Problem(
                    sample.position,
                    sample.relative_path,
                    "valid_frame_idx",
                    f"leaves {frames} usable frames (of {sample.num_frames}) but --min_frames is {args.min_frames}",
                    "record a longer clip, lower valid_frame_idx, or remove the entry",
                )
            )
        else:
            usable.append(sample)
    for problem in sorted(problems, key=lambda problem: problem.position):
        print(problem)
    status = "FAILED" if problems else "OK"
    checked = (
        f"controls checked against {vocabulary.source}"
        if vocabulary is not None
        else f"no {VOCABULARY_FILE} in data_root: controls checked for one token per frame only"
    )
    print(f"{status}: {args.index_file}: {len(usable)} usable clips, {len(problems)} problems; {checked}")
    return EXIT_PROBLEMS if problems else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
