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
and the rest (the HUD).
"""

from __future__ import annotations

import argparse
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


def explained_share(values: np.ndarray, labels: Sequence[str]) -> float:
    """The share of the variance of ``values`` ``[N, ...]`` that the class means of ``labels`` (N) explain."""
    flat = values.reshape(len(values), -1).astype(np.float64)
    labels = np.asarray(labels)
    mean = flat.mean(axis=0)
    total = ((flat - mean) ** 2).sum()
    between = sum(
        (labels == label).sum() * ((flat[labels == label].mean(axis=0) - mean) ** 2).sum()
        for label in np.unique(labels)
    )
    return float(between / total)


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
    args = parser.parse_args()
    latents, tokens = encoded_clips(args.model_dir, args.data_root, args.index_file, args.max_clips)
    spatial = generation_defaults(args.model_dir).height // latents.shape[3]  # frame rows per latent row
    top, bottom = args.scene_rows
    shares = key_part_signal(latents, tokens, slice(top // spatial, bottom // spatial))
    print(f"{len(latents)} clips of {latents.shape[1]} latent frames; share of the variance each key part explains")
    for name, regions in shares.items():
        for region, parts in regions.items():
            print(f"  {name:17s} {region:12s} " + "  ".join(f"{part} {share:.4f}" for part, share in parts.items()))
    if args.output is not None:
        record = {"settings": {key: str(value) for key, value in vars(args).items()}, "clips": len(latents)}
        args.output.write_text(json.dumps({**record, "explained_share": shares}, indent=2) + "\n")


if __name__ == "__main__":
    main()
