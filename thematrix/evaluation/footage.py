"""Real footage as evaluation reads it: clips decoded whole, passed through the model's VAE, and the
statistics that generated video is compared with.

Generated frames are decoded by the model's VAE, so real clips are compared in the same domain: each clip
is encoded and decoded (the latent distribution's mode) by that VAE before anything is measured. Every
stage shares its base model's VAE, so one IDM and one reference serve the whole chain; a fingerprint of the
VAE's weights is kept with them to catch a model whose VAE differs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX

from thematrix.controls import ControlVocabulary
from thematrix.data.dataset import VideoDataset
from thematrix.data.index import load_index
from thematrix.evaluation.idm import InverseDynamicsModel, predict
from thematrix.evaluation.metrics import (
    FeatureStats,
    agreement,
    chance_levels,
    colour_histogram,
    frechet_distance,
    to_uint8,
    total_variation,
)


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a module's weights as float32 (the same weights saved in bf16 or float32 give the same print
    only when they are equal in both)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def round_trip_lengths(vae: AutoencoderKLCogVideoX, max_frames: int) -> list[int]:
    """Clip lengths (frames) up to ``max_frames`` that ``vae`` decodes back to the same length: 1 + c * k with
    an odd number ``k + 1`` of latent frames. The decoder treats the first frame of its first batch as the
    causal first frame only when that batch is odd (see thematrix.streaming_vae), so an even number of latent
    frames decodes to c more frames than were encoded."""
    c, batch = vae.config.temporal_compression_ratio, vae.num_latent_frames_batch_size
    return [1 + c * k for k in range(batch, (max_frames - 1) // c + 1, batch)]


@torch.no_grad()
def reconstruct(vae: AutoencoderKLCogVideoX, video: torch.Tensor) -> torch.Tensor:
    """``video`` ``[F, 3, H, W]`` in [-1, 1] (F one of ``round_trip_lengths``) encoded and decoded by ``vae``: the
    same shape, float32, CPU."""
    clip = video.to(vae.device, vae.dtype).permute(1, 0, 2, 3)[None]
    decoded = vae.decode(vae.encode(clip).latent_dist.mode()).sample[0].permute(1, 0, 2, 3)
    if len(decoded) != len(video):
        raise ValueError(f"a clip of {len(video)} frames decodes to {len(decoded)}; use one of round_trip_lengths")
    return decoded.float().clamp(-1, 1).cpu()


@dataclass
class RealClips:
    """Clips end to end: ``frames`` uint8 ``[N, 3, H, W]``, ``labels`` ``[N]`` (each frame's control token id),
    and each clip's first frame and length; ``paths`` name the files."""

    frames: torch.Tensor
    labels: torch.Tensor
    starts: list[int]
    lengths: list[int]
    paths: list[str]

    def window_ends(self, frames_per_latent: int) -> torch.Tensor:
        """Every frame that ends a window of ``c + 1`` frames inside its own clip (the IDM trains on all of them)."""
        return self._ends(frames_per_latent, 1)

    def latent_frame_ends(self, frames_per_latent: int) -> torch.Tensor:
        """The frames that end a latent frame (every ``c``-th after each clip's first frame): where windows of
        generated video end (``idm.window_ends``). The IDM reads windows at the four phases of the VAE's frame
        groups unequally well, so real footage is scored only at the phase generated video is scored at."""
        return self._ends(frames_per_latent, frames_per_latent)

    def _ends(self, frames_per_latent: int, stride: int) -> torch.Tensor:
        return torch.cat(
            [
                torch.arange(start + frames_per_latent, start + length, stride)
                for start, length in zip(self.starts, self.lengths)
            ]
        )

    def clip(self, index: int) -> torch.Tensor:
        start = self.starts[index]
        return self.frames[start : start + self.lengths[index]]

    def clip_labels(self, index: int) -> torch.Tensor:
        """The control token ids of clip ``index``'s frames."""
        start = self.starts[index]
        return self.labels[start : start + self.lengths[index]]


def load_real_clips(
    data_root: str | Path,
    index_file: str | Path,
    vocabulary: ControlVocabulary,
    *,
    fps: float,
    height: int,
    width: int,
    temporal_compression: int,
    max_frames: int,
    vae: AutoencoderKLCogVideoX | None = None,
) -> RealClips:
    """Every usable clip of the index, up to ``max_frames`` frames (4k+1) from its first usable frame, resampled
    and resized as training reads it; through ``vae`` (encode + decode) when given."""
    samples, problems = load_index(index_file, data_root, vocabulary)
    if not samples:
        listed = "; ".join(str(problem) for problem in problems[:5])
        raise ValueError(f"{index_file}: no usable clip for evaluation ({listed})")
    buckets = (
        round_trip_lengths(vae, max_frames)
        if vae is not None
        else [temporal_compression * k + 1 for k in range(1, (max_frames - 1) // temporal_compression + 1)]
    )
    dataset = VideoDataset(
        samples,
        fps=fps,
        height=height,
        width=width,
        frame_buckets=buckets,
        temporal_compression=temporal_compression,
        vocabulary=vocabulary,
    )
    frame_controls = {sample.path: sample.frame_controls for sample in samples}
    frames, labels, starts, lengths, paths = [], [], [], [], []
    for index in range(len(dataset)):
        item = dataset[index]
        video = reconstruct(vae, item["video"]) if vae is not None else item["video"]
        tokens = [frame_controls[item["path"]][k] for k in dataset.frame_indices(index)]
        starts.append(sum(lengths))
        lengths.append(len(video))
        frames.append(to_uint8(video))
        labels.append(torch.tensor(vocabulary.encode(tokens)))
        paths.append(item["path"])
    return RealClips(torch.cat(frames), torch.cat(labels), starts, lengths, paths)


def binned_histogram_distances(clips: RealClips, reference: torch.Tensor, bin_frames: int) -> list[float]:
    """Total variation of each whole ``bin_frames``-frame stretch of every clip to the ``reference`` histogram."""
    distances = []
    for index in range(len(clips.lengths)):
        clip = clips.clip(index)
        for start in range(0, len(clip) - bin_frames + 1, bin_frames):
            distances.append(total_variation(colour_histogram(clip[start : start + bin_frames]), reference))
    return distances


def spread(values: list[float]) -> dict:
    """Summary of a distribution of per-bin values."""
    ordered = torch.tensor(sorted(values), dtype=torch.float64)
    if len(ordered) == 0:
        return {"count": 0}
    return {
        "count": len(ordered),
        "mean": ordered.mean().item(),
        "min": ordered[0].item(),
        "p95": torch.quantile(ordered, 0.95).item(),
        "max": ordered[-1].item(),
    }


def worst_mean_bin_reference(
    real_bins: list[float], num_streams: int, num_bins: int, *, quantile: float, draws: int, seed: int
) -> float:
    """The ``quantile`` of the worst of ``num_bins`` means of ``num_streams`` bins drawn from real footage's bins:
    how far the worst bin of a mean over ``num_streams`` streams lies from the game when each stream's bins are
    as far as real footage's. A mean over streams spreads less than one bin, so single bins' spread would be
    too lenient a reference for it."""
    values = torch.tensor(real_bins, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    draws_at = torch.randint(len(values), (draws, num_bins, num_streams), generator=generator)
    worst = values[draws_at].mean(dim=-1).amax(dim=-1)
    return torch.quantile(worst, quantile).item()


def real_footage_measures(
    idm: InverseDynamicsModel, heldout: RealClips, train: RealClips, bin_frames: int, drift: RealClips | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """What generated video is held against: the IDM on held-out clips (its ceiling, with chance beside it),
    the held-out frames' colour histogram and IDM feature statistics (the reference), how far 100-frame
    stretches of real footage (``drift``'s clips, default the held-out ones) lie from that reference (the spread
    that drift is judged by, each bin's distance kept), and how far the training clips lie from it (the floor
    of domain fit between two sets of real footage). The IDM reads windows ending where a latent frame ends
    (``latent_frame_ends``), as it reads generated video.

    Returns (JSON-ready measures, reference tensors for ``Reference``)."""
    device = next(idm.parameters()).device
    c = idm.config.frames_per_latent
    ends = heldout.latent_frame_ends(c)
    predicted, features = predict(idm, heldout.frames.to(device), ends)
    commanded = heldout.labels[ends]
    reference = FeatureStats.of(features)
    histogram = colour_histogram(heldout.frames)
    binned = heldout if drift is None else drift
    real_bins = binned_histogram_distances(binned, histogram, bin_frames)
    train_ends = train.latent_frame_ends(c)
    train_features = predict(idm, train.frames.to(device), train_ends)[1]
    measures = {
        "heldout_clips": len(heldout.lengths),
        "idm": agreement(predicted, commanded, idm.tokens),
        "chance": chance_levels(commanded, len(idm.tokens)),
        "bin_frames": bin_frames,
        "real_bins_total_variation": spread(real_bins),
        "real_bins_total_variation_values": real_bins,
        "real_bins_footage": {"clips": len(binned.lengths), "held_out_clips": drift is None},
        "train_vs_heldout": {
            "total_variation": total_variation(colour_histogram(train.frames), histogram),
            "frechet": frechet_distance(FeatureStats.of(train_features), reference),
        },
    }
    tensors = {"histogram": histogram, "feature_mean": reference.mean, "feature_covariance": reference.covariance}
    return measures, tensors
