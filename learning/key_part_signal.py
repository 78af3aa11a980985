"""How much of real footage's latent frames each part of CarRacing's keys accounts for: the signal the control
module has to learn from.

    python learning/key_part_signal.py --model_dir outputs/learning/models/stage1-fused \\
        --data_root outputs/learning/footage/game --index_file outputs/learning/footage/game/index.json \\
        --scene_rows 0 82 --output outputs/learning/results/key_part_signal.json

Knowing a latent frame's key lowers the denoising loss by what the key tells of the latents. The share of their
variance that the key part's class means explain (between-class over total sum of squares) is the part of that
gain a model gets from the key alone, without the state the key acts on. It is measured over the training clips
as the stages encode them (the model's VAE, its frame rate, size and clip length), for the latent frames, their
change over one latent frame and the change of that change, over the whole frame, the scene (``--scene_rows``)
and the rest (the HUD). ``--maps`` adds the share at each latent position, and what share of the loss each key
part would take were the loss weighted by where the keys show (``key_part_maps``).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from results_page import KEY_PARTS

from thematrix.controls import data_root_vocabulary, latent_frame_controls
from thematrix.data.dataset import VideoDataset
from thematrix.data.index import load_index
from thematrix.model_dir import VAE, generation_defaults

# The latents, their change over one latent frame, and the change of that change: a key held shows in the
# latents, a steering key in their change (the view turns), a pedal in the change of their change (the speed).
DIFFERENCE_ORDERS = {"latents": 0, "change": 1, "change of change": 2}


def class_sums(values: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(between-class, total) sums of squares of ``values`` ``[N, ...]`` grouped by ``labels`` (N), per element of
    a value (``values.shape[1:]``)."""
    values = values.astype(np.float64)
    labels = np.asarray(labels)
    mean = values.mean(axis=0)
    total = ((values - mean) ** 2).sum(axis=0)
    between = sum(
        (labels == label).sum() * (values[labels == label].mean(axis=0) - mean) ** 2 for label in np.unique(labels)
    )
    return between, total


def explained_share(values: np.ndarray, labels: Sequence[str]) -> float:
    """The share of the variance of ``values`` ``[N, ...]`` that the class means of ``labels`` (N) explain."""
    between, total = class_sums(values, labels)
    return float(between.sum() / total.sum())


WHOLE_KEY = "whole key"
MAP_STRENGTHS = (1.0, 3.0, 10.0)  # loss weightings by a map: weight 1 + s * map / mean(map), rescaled to mean 1


def weighted_share(between: np.ndarray, total: np.ndarray, weighting: np.ndarray, strength: float) -> float:
    """The share of a loss summed over latent positions that a key's between-class sums take, the loss weighted
    at each position by ``weighting`` ``[h, w]`` at ``strength``."""
    weights = 1 + strength * weighting / weighting.mean()
    return float((weights * between).sum() / (weights * total).sum())


def key_part_maps(latents: np.ndarray, tokens: np.ndarray) -> dict:
    """Where the keys show, and whether weighting the loss by it would let a small key part count: per key part
    and the whole key, the explained share at each latent position ``[h, w]`` (summed over channels); then each
    part's share of the loss weighted by three maps: the whole key's (what a weighting that knows only the tokens
    measures), the largest contrast between two tokens' means at each position, each pair's scaled to mean 1 (so
    that a small contrast counts as much as a large one), and the part's own (which needs the key's parts, so is
    specific to a game's keys)."""
    frames = latents.reshape(-1, *latents.shape[2:])  # [clips x F, C, h, w]
    labels = tokens.reshape(-1)
    splits = {**KEY_PARTS, WHOLE_KEY: lambda token: token}
    sums = {
        part: [s.sum(axis=0) for s in class_sums(frames, [split(t) for t in labels])] for part, split in splits.items()
    }
    total = sums[WHOLE_KEY][1]
    maps = {part: between / total for part, (between, _) in sums.items()}
    variance = total / len(labels)
    means = {token: frames[labels == token].mean(axis=0) for token in np.unique(labels)}
    contrasts = [((means[a] - means[b]) ** 2).sum(axis=0) / variance for a, b in itertools.combinations(means, 2)]
    largest_pair = np.max([contrast / contrast.mean() for contrast in contrasts], axis=0)
    weighting_of_part = {  # the map each key part's loss is weighted by
        "the whole key's map": lambda part: maps[WHOLE_KEY],
        "the largest pair of tokens": lambda part: largest_pair,
        "each part's own map": lambda part: maps[part],
    }
    shares = {
        name: {
            strength: {part: weighted_share(sums[part][0], total, weighting(part), strength) for part in splits}
            for strength in MAP_STRENGTHS
        }
        for name, weighting in weighting_of_part.items()
    }
    return {"maps": {part: value.tolist() for part, value in maps.items()}, "weighted_loss_share": shares}


def plot_maps(maps: dict[str, list], path: Path) -> None:
    """Each map as a heat map, its colour scale its own."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(maps), figsize=(4 * len(maps), 2.6))
    for axis, (part, values) in zip(axes, maps.items()):
        image = axis.imshow(np.array(values), cmap="viridis")
        axis.set_title(f"{part}: explained share", fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
        figure.colorbar(image, ax=axis, fraction=0.03)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def key_part_signal(latents: np.ndarray, tokens: np.ndarray, scene_rows: slice) -> dict:
    """Each key part's explained share, by difference order and region: ``latents`` ``[clips, F, C, h, w]``,
    ``tokens`` ``[clips, F]`` the keys of the latent frames, ``scene_rows`` the scene's latent rows."""
    rows = np.arange(latents.shape[3])
    regions = {"whole frame": rows, "scene": rows[scene_rows], "rest": np.setdiff1d(rows, rows[scene_rows])}
    shares = {}
    for name, order in DIFFERENCE_ORDERS.items():
        values = np.diff(latents, n=order, axis=1) if order else latents
        frames = tokens[:, order:].reshape(-1)  # the key of the last latent frame each difference spans
        shares[name] = {
            region: {
                part: explained_share(values[:, :, :, region_rows].reshape(len(frames), -1), [split(t) for t in frames])
                for part, split in KEY_PARTS.items()
            }
            for region, region_rows in regions.items()
            if len(region_rows)
        }
    return shares


def encoded_clips(model_dir: str, data_root: str, index_file: str, max_clips: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``max_clips`` training clips as the model's stages read them, through its VAE (the latents'
    means, unscaled), with each latent frame's key."""
    from diffusers import AutoencoderKLCogVideoX

    record = generation_defaults(model_dir)
    vae = AutoencoderKLCogVideoX.from_pretrained(model_dir, subfolder=VAE).eval()
    compression = vae.config.temporal_compression_ratio
    vocabulary = data_root_vocabulary(data_root)
    samples, _ = load_index(index_file, data_root, vocabulary)
    dataset = VideoDataset(
        samples,
        fps=record.fps,
        height=record.height,
        width=record.width,
        frame_buckets=[record.num_frames],
        temporal_compression=compression,
        vocabulary=vocabulary,
    )
    frame_controls = {sample.path: sample.frame_controls for sample in samples}
    latents, tokens = [], []
    with torch.no_grad():
        for index in range(min(max_clips, len(dataset))):
            item = dataset[index]
            video = item["video"].permute(1, 0, 2, 3)[None]  # [1, 3, F, H, W]
            latents.append(vae.encode(video).latent_dist.mean[0].transpose(0, 1).numpy())
            clip_tokens = [frame_controls[item["path"]][frame] for frame in dataset.frame_indices(index)]
            tokens.append(latent_frame_controls(clip_tokens, compression))
    return np.stack(latents), np.array(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a model whose VAE the stages encode with")
    parser.add_argument("--data_root", required=True, help="the stages' training footage")
    parser.add_argument("--index_file", required=True)
    parser.add_argument("--scene_rows", type=int, nargs=2, required=True, metavar=("TOP", "BOTTOM"))
    parser.add_argument("--max_clips", type=int, default=300)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--maps", type=Path, default=None, help="a PNG of each key part's share at each position")
    args = parser.parse_args()
    latents, tokens = encoded_clips(args.model_dir, args.data_root, args.index_file, args.max_clips)
    spatial = generation_defaults(args.model_dir).height // latents.shape[3]  # frame rows per latent row
    top, bottom = args.scene_rows
    shares = key_part_signal(latents, tokens, slice(top // spatial, bottom // spatial))
    print(f"{len(latents)} clips of {latents.shape[1]} latent frames; share of the variance each key part explains")
    for name, regions in shares.items():
        for region, parts in regions.items():
            print(f"  {name:17s} {region:12s} " + "  ".join(f"{part} {share:.4f}" for part, share in parts.items()))
    positions = {}
    if args.maps is not None:
        positions = key_part_maps(latents, tokens)
        plot_maps(positions["maps"], args.maps)
        print("share of the loss each key part takes, the loss weighted at each latent position by")
        for name, by_strength in positions["weighted_loss_share"].items():
            for strength, parts in by_strength.items():
                print(
                    f"  {name}, s = {strength:g}: " + "  ".join(f"{part} {share:.4f}" for part, share in parts.items())
                )
    if args.output is not None:
        record = {"settings": {key: str(value) for key, value in vars(args).items()}, "clips": len(latents)}
        args.output.write_text(json.dumps({**record, "explained_share": shares, **positions}, indent=2) + "\n")


if __name__ == "__main__":
    main()
