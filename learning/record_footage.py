"""Record CarRacing footage in parallel processes and merge their indexes into one data root.

    python learning/record_footage.py --output_dir outputs/learning/footage/game --episodes 100 \
        --processes 16 --seed 0 -- --clips_per_episode 3 --frames_per_clip 41 --resolution 96x144

Process i runs ``data/record_carracing.py`` on its own contiguous range of the episodes into
``<output_dir>/shard_<i>``; every process has the same seed and the recorder seeds episode e by (seed, e), so
the footage depends on the seed and the episode count, not on how many processes record it. Flags after ``--``
go to every recorder. The merged ``<output_dir>/index.json`` lists every shard's clips with paths relative to
``output_dir``; a ``vocabulary.json`` the shards wrote is copied beside it. Sets recorded with other seeds
(0, 1000, 2000 in learning/gpu/) share no episode. A finished ``output_dir`` (one that has its index) is
left as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RECORDER = Path(__file__).resolve().parents[1] / "data" / "record_carracing.py"
INDEX_FILE = "index.json"
VOCABULARY_FILE = "vocabulary.json"
SHARD_PREFIX = "shard_"
LOG_SUFFIX = ".log"
LOG_TAIL = 2000  # characters of a failed recorder's output shown


def merge_indexes(output_dir: Path, shards: list[Path]) -> Path:
    """One index over every shard's clips (paths made relative to ``output_dir``), written atomically."""
    entries = []
    for shard in shards:
        for entry in json.loads((shard / INDEX_FILE).read_text())["list"]:
            entries.append(dict(entry, path=(shard.relative_to(output_dir) / entry["path"]).as_posix()))
    vocabularies = {(shard / VOCABULARY_FILE).read_text() for shard in shards if (shard / VOCABULARY_FILE).is_file()}
    if len(vocabularies) > 1:
        raise SystemExit(f"{output_dir}: the shards wrote different {VOCABULARY_FILE} files")
    if vocabularies:
        (output_dir / VOCABULARY_FILE).write_text(vocabularies.pop())
    partial, index = output_dir / f".{INDEX_FILE}.partial", output_dir / INDEX_FILE
    partial.write_text(json.dumps({"list": entries}, indent=1) + "\n")
    os.replace(partial, index)
    return index


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    own, recorder_flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--episodes", type=int, required=True, help="episodes in all, spread over the processes")
    parser.add_argument(
        "--processes", type=int, default=os.cpu_count(), help="recorders run at once (default: one per core)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds every episode with its number")
    args = parser.parse_args(own)
    if (args.output_dir / INDEX_FILE).is_file():
        print(f"{args.output_dir / INDEX_FILE} exists: footage already recorded")
        return
    processes = max(1, min(args.processes, args.episodes))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    shards, running, first_episode = [], [], 0
    for shard in range(processes):
        episodes = args.episodes // processes + (shard < args.episodes % processes)
        shard_dir = args.output_dir / f"{SHARD_PREFIX}{shard:02d}"
        command = [
            sys.executable,
            str(RECORDER),
            "--output_dir",
            str(shard_dir),
            "--episodes",
            str(episodes),
            "--seed",
            str(args.seed),
            "--first_episode",
            str(first_episode),
            *recorder_flags,
        ]
        first_episode += episodes
        shards.append(shard_dir)
        with open(shard_dir.with_suffix(LOG_SUFFIX), "w") as log:  # the recorder's progress and errors
            running.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    failures = [shard for shard, process in zip(shards, running) if process.wait()]
    for shard in failures:
        print(
            f"{shard}: recorder failed; its output:\n{shard.with_suffix(LOG_SUFFIX).read_text()[-LOG_TAIL:]}",
            file=sys.stderr,
        )
    if failures:
        raise SystemExit(f"{len(failures)} of {processes} recorders failed")
    index = merge_indexes(args.output_dir, shards)
    clips = len(json.loads(index.read_text())["list"])
    print(f"{clips} clips from {args.episodes} episodes in {processes} processes: {index}")


if __name__ == "__main__":
    main()
