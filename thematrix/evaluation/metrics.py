"""The measures, as pure functions of frames, features and token ids: nothing here knows a model or a game.

- colour histograms of frames (or of per-frame colour counts) and the total variation distance between two of them
  (domain fit, drift);
- the Frechet distance between two Gaussian fits of features (FID's formula on the IDM's features);
- agreement between predicted and commanded control ids: overall, per class, confusion; chance levels; its
  standard error where the scored frames come in correlated clusters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# 8 levels per channel: 512 colours, enough to tell grass, track, kerbs, car and HUD apart, few enough that
# a few thousand frames fill the bins they use.
HISTOGRAM_LEVELS = 8
UINT8_LEVELS = 256
# Frames quantised at a time: their int64 colour codes take about 40 bytes a pixel, a gigabyte for 64 frames at
# 480x720.
COUNTED_FRAMES_AT_ONCE = 64


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Frames ``[n, 3, H, W]`` in [-1, 1] (float) or uint8 -> uint8, as a video file would hold them."""
    if frames.dtype == torch.uint8:
        return frames
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def colour_counts(frames: torch.Tensor, levels: int = HISTOGRAM_LEVELS) -> torch.Tensor:
    """Pixels per quantised RGB colour in each of ``frames`` ``[n, 3, H, W]``: int64 ``[n, levels**3]``. Kept per
    frame, any stretch of a long video has its histogram without the frames (``histogram_of``)."""
    per_frame = []
    for chunk in frames.split(COUNTED_FRAMES_AT_ONCE):
        quantised = to_uint8(chunk).long() * levels // UINT8_LEVELS  # [n, 3, H, W] in 0..levels-1
        codes = (quantised[:, 0] * levels + quantised[:, 1]) * levels + quantised[:, 2]
        codes = codes.flatten(1).cpu() + torch.arange(len(chunk))[:, None] * levels**3  # each frame its own bins
        per_frame.append(torch.bincount(codes.flatten(), minlength=len(chunk) * levels**3).view(len(chunk), -1))
    return torch.cat(per_frame)


def histogram_of(counts: torch.Tensor) -> torch.Tensor:
    """Share of pixels per colour over all the frames of ``colour_counts``: float64 ``[levels**3]``, sum 1."""
    total = counts.sum(0).double()
    return total / total.sum()


def colour_histogram(frames: torch.Tensor, levels: int = HISTOGRAM_LEVELS) -> torch.Tensor:
    """Share of pixels per quantised RGB colour over all ``frames`` ``[n, 3, H, W]``: float64 ``[levels**3]``, sum 1."""
    return histogram_of(colour_counts(frames, levels))


def total_variation(first: torch.Tensor, second: torch.Tensor) -> float:
    """Total variation distance of two histograms: the share of mass that sits in the wrong bins, in [0, 1]."""
    return 0.5 * (first - second).abs().sum().item()


@dataclass
class FeatureStats:
    """Mean and covariance of feature vectors, float64."""

    mean: torch.Tensor
    covariance: torch.Tensor
    count: int

    @classmethod
    def of(cls, features: torch.Tensor) -> FeatureStats:
        features = features.double()
        if len(features) < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {len(features)}")
        return cls(features.mean(dim=0), torch.cov(features.T), len(features))


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(first: FeatureStats, second: FeatureStats) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2): FID's distance between the two Gaussian fits."""
    root = _sqrt_psd(first.covariance)
    cross = _sqrt_psd(root @ second.covariance @ root)
    difference = first.mean - second.mean
    return (difference @ difference + first.covariance.trace() + second.covariance.trace() - 2 * cross.trace()).item()


def agreement(predicted: torch.Tensor, commanded: torch.Tensor, tokens: tuple[str, ...]) -> dict:
    """How often ``predicted`` ids equal ``commanded`` ids (both ``[n]``, ids into ``tokens``).

    Returns ``accuracy`` (overall), ``per_class`` (accuracy per commanded token; None where it never
    occurs), ``counts`` (commands per token), ``confusion`` (rows commanded, columns predicted) and ``count``.
    """
    num_classes = len(tokens)
    predicted, commanded = predicted.long().cpu(), commanded.long().cpu()
    if predicted.shape != commanded.shape:
        raise ValueError(f"{len(predicted)} predictions for {len(commanded)} commands")
    if len(commanded) == 0:
        raise ValueError("no commanded control to compare with: the videos have no scored latent frame")
    confusion = torch.bincount(commanded * num_classes + predicted, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )
    counts = confusion.sum(dim=1)
    per_class = {
        token: (confusion[index, index].item() / counts[index].item() if counts[index] else None)
        for index, token in enumerate(tokens)
    }
    return {
        "accuracy": confusion.diagonal().sum().item() / len(commanded),
        "per_class": per_class,
        "counts": dict(zip(tokens, counts.tolist())),
        "confusion": confusion.tolist(),
        "count": len(commanded),
    }


def clustered_standard_error(hits: list[int], counts: list[int]) -> float | None:
    """Standard error of the pooled agreement ``sum(hits) / sum(counts)`` when the scored latent frames come in
    clusters (a clip, a stretch of a stream) whose frames are not independent: a held key and a scene that changes
    slowly make neighbouring frames agree or fail together, so a binomial error over frames would be too small.
    The ratio estimator's error over the clusters; None with fewer than two clusters that hold frames."""
    clusters = [(hit, count) for hit, count in zip(hits, counts, strict=True) if count]
    if len(clusters) < 2:
        return None
    total = sum(count for _, count in clusters)
    pooled = sum(hit for hit, _ in clusters) / total
    spread = sum((hit - pooled * count) ** 2 for hit, count in clusters)
    return math.sqrt(len(clusters) / (len(clusters) - 1) * spread) / total


def chance_levels(commanded: torch.Tensor, num_classes: int) -> dict:
    """Accuracy of guessing without looking: uniformly at random among ``num_classes`` tokens, and always the most
    frequent command."""
    counts = torch.bincount(commanded.long().cpu())
    return {"uniform": 1.0 / num_classes, "majority": counts.max().item() / counts.sum().item()}


def key_blind_agreement(confusion: list[list[int]]) -> float:
    """The agreement to expect from videos whose readings do not depend on the commands: the sum over tokens of
    the commanded share times the read share (rows commanded, columns read). Uniform chance assumes the readings
    spread evenly over the tokens; a model that ignores its keys draws some scenes more often than others, and
    the IDM reads them so."""
    table = torch.tensor(confusion, dtype=torch.float64)
    total = table.sum()
    if total == 0:
        raise ValueError("an empty confusion matrix: no scored latent frame")
    return (table.sum(dim=1) @ table.sum(dim=0) / total**2).item()


def ceiling_for_mix(per_class_accuracy: dict, counts: dict) -> float:
    """The IDM's real-footage accuracy weighted by a set of commands' class mix: what perfect generation scores."""
    scored = {token: count for token, count in counts.items() if count}
    missing = [token for token in scored if per_class_accuracy.get(token) is None]
    if missing:
        raise ValueError(f"the IDM has no real-footage accuracy for the commanded tokens {missing}")
    return sum(per_class_accuracy[token] * count for token, count in scored.items()) / sum(scored.values())
