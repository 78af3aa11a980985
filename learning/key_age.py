"""Whether the IDM's ceiling suits the commands generated video is held to: its held-out accuracy by how long the
key had been held, weighed as the evaluation's random commands hold their keys.

    python learning/key_age.py --idm outputs/learning/idm --model_dir outputs/learning/models/stage1-fused \\
        --data_root outputs/learning/footage/heldout --index_file outputs/learning/footage/heldout/index.json

The ceiling is the IDM's accuracy on real footage, read where each window ends. A window read just after the key
changed shows less of the key's effect than one read after it was held a while; if the clip measure's commands
(a random key held for 1 to 4 latent frames, `commanded_controls`) changed keys more often than the
footage's driver did, the ceiling would overstate what generated clips could score. This prints the accuracy by
the key's age (latent frames since it began) and the ceiling re-weighed by the ages the commands have.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch
from idm_regions import accuracies, add_clip_arguments, reconstructed_clips

from thematrix.controls import ControlVocabulary
from thematrix.evaluation.evaluate import Reference
from thematrix.evaluation.footage import RealClips
from thematrix.evaluation.generation import commanded_controls
from thematrix.evaluation.idm import predict

# Ages of this many latent frames or more share one row: few windows are older.
OLDEST_AGE = 3


def real_key_ages(clips: RealClips, ends: torch.Tensor, frames_per_latent: int) -> list[int]:
    """For each window end, the latent frames since its clip's key there began (0: within the last latent frame)."""
    ages = []
    for end in ends.tolist():
        start = max(start for start in clips.starts if start <= end)
        first = end
        while first > start and clips.labels[first - 1] == clips.labels[end]:
            first -= 1
        ages.append(min((end - first) // frames_per_latent, OLDEST_AGE))
    return ages


def commanded_age_shares(commands: ControlVocabulary, num_clips: int, latent_frames: int) -> dict[int, float]:
    """The share of each key age among the scored latent frames of the clip measure's commands (its keys drawn
    from ``commands``, ``Reference.commands``; seeds 0..)."""
    ages = Counter()
    for seed in range(num_clips):
        keys = commanded_controls(commands, latent_frames, seed)
        age = 0
        for index in range(1, latent_frames):  # latent frame 0 is the clip's first frame alone: not scored
            age = age + 1 if keys[index] == keys[index - 1] else 0
            ages[min(age, OLDEST_AGE)] += 1
    total = sum(ages.values())
    return {age: count / total for age, count in sorted(ages.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_clip_arguments(parser)
    parser.add_argument("--num_clips", type=int, default=64, help="clips of the clip measure (its seeds 0..)")
    parser.add_argument("--clip_latent_frames", type=int, default=11, help="latent frames of a generated clip")
    parser.add_argument("--output", type=Path, default=None, help="JSON file of the measures")
    args = parser.parse_args()

    device = torch.device("cpu")
    reference = Reference.load(args.idm, device)
    clips = reconstructed_clips(reference, args.model_dir, args.data_root, args.index_file, args.max_frames, device)
    c = reference.idm.config.frames_per_latent
    ends = clips.latent_frame_ends(c)
    predicted, _ = predict(reference.idm, clips.frames, ends)
    labels = clips.labels[ends]
    ages = torch.tensor(real_key_ages(clips, ends, c))
    by_age = {}
    for age in range(OLDEST_AGE + 1):
        chosen = ages == age
        by_age[age] = {
            "windows": int(chosen.sum()),
            **accuracies(predicted[chosen], labels[chosen], reference.idm.tokens),
        }
    shares = commanded_age_shares(reference.commands(None), args.num_clips, args.clip_latent_frames)
    parts = list(by_age[0])[1:]
    measures = {
        "by_age": by_age,
        "real_footage": accuracies(predicted, labels, reference.idm.tokens),
        "commanded_age_shares": shares,
        "at_commanded_ages": {part: sum(shares[age] * by_age[age][part] for age in shares) for part in parts},
    }
    print("| key age (latent frames) | windows | " + " | ".join(parts) + " |")
    print("|" + " --- |" * (len(parts) + 2))
    for age, row in by_age.items():
        label = f"{age}+" if age == OLDEST_AGE else str(age)
        print(f"| {label} | {row['windows']} | " + " | ".join(f"{row[part]:.3f}" for part in parts) + " |")
    for name in ("real_footage", "at_commanded_ages"):
        print(f"{name}: " + ", ".join(f"{part} {measures[name][part]:.3f}" for part in parts))
    print("commanded ages: " + ", ".join(f"{age}: {share:.2f}" for age, share in shares.items()))
    if args.output is not None:
        args.output.write_text(json.dumps(measures, indent=1) + "\n")


if __name__ == "__main__":
    main()
