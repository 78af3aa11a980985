"""Which part of CarRacing's keys a model uses: its denoising error on real clips with their own keys, with their
own steering and another clip's pedal, with another clip's steering and their own pedal (and the null and other
keys of ``control_use``), per noise level.

    python learning/key_part_use.py --model_dir outputs/learning/models/stage2/model \\
        --data_root outputs/learning/footage/game --index_file outputs/learning/footage/game/index.json \\
        --output outputs/learning/results/key_part_use.json

A part the model uses costs error when it is swapped; a part it ignores costs none. Stage 2 follows the steering
of the commanded keys but not the pedals (learning/RESULTS.md): this tells a module that never learnt the pedals
from one whose pedal effect does not survive sampling.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from thematrix.evaluation.control_use import DEFAULT_TIMESTEPS, control_use

PEDAL_LENGTH = 1  # a CarRacing token is its pedal (D, B or N) followed by its steering ("", L or R)
MIXES = {
    "own steering, other clip's pedal": lambda own, other: other[:PEDAL_LENGTH] + own[PEDAL_LENGTH:],
    "other clip's steering, own pedal": lambda own, other: own[:PEDAL_LENGTH] + other[PEDAL_LENGTH:],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--index_file", required=True)
    parser.add_argument("--num_clips", type=int, default=16)
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS))
    parser.add_argument("--fps", type=float, default=None, help="for a model that records no training frame rate")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    measures = control_use(
        args.model_dir,
        args.data_root,
        args.index_file,
        num_clips=args.num_clips,
        timesteps=tuple(args.timesteps),
        fps=args.fps,
        mixed_key_sets=MIXES,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"model_dir": str(args.model_dir), **measures}, indent=2))
    print("| keys | " + " | ".join(f"t = {t}" for t in measures["timesteps"]) + " |")
    print("| --- |" + " --- |" * len(measures["timesteps"]))
    for name, errors in measures["x0_mse"].items():
        print(f"| {name} | " + " | ".join(f"{error:.4f}" for error in errors) + " |")


if __name__ == "__main__":
    main()
