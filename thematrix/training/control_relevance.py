"""Where in the frame the controls show: a loss weighting that lets small control signals count.

A key's effect can be a few pixels (a game's gauges) or a slow change (a speed): a small share of what the
denoising loss averages over, so a control module learns it last, if at all. The share of the latents' variance
that the control tokens' class means explain at each latent position (between-class over total sum of squares,
summed over channels and latent frames) measures where the footage shows its keys; weighting the loss by it, as
``args.control_relevance_loss_weight`` does, makes those positions count more. The map is the footage's own, so it
assumes nothing of the game.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def relevance_map(clips: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``[h, w]``: the share of the latents' variance at each position that the control tokens' class means explain.

    ``clips`` yields (latents ``[F, C, h, w]``, control ids ``[F]``), one token per latent frame. Positions where
    the latents do not vary get 0.
    """
    return explained_ratio(*explained_sums(clips))


def explained_ratio(between: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """``between / total`` (float32), 0 where the total is 0 (latents that do not vary)."""
    varies = total > 0
    return torch.where(varies, between / total.where(varies, torch.ones_like(total)), torch.zeros_like(total)).float()


def explained_sums(clips: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(between-class, total) sums of squares ``[h, w]`` (float64, summed over channels and frames) of ``clips`` as
    ``relevance_map`` takes them: a region's share is its between-class sum over its total."""
    count: dict[int, int] = {}
    token_sum: dict[int, torch.Tensor] = {}
    total_sum = total_squares = None
    frames = 0
    for latents, controls in clips:
        latents = latents.double()
        if total_sum is None:
            total_sum, total_squares = torch.zeros_like(latents[0]), torch.zeros_like(latents[0])
        total_sum += latents.sum(dim=0)
        total_squares += (latents**2).sum(dim=0)
        frames += len(latents)
        for token in controls.unique().tolist():
            chosen = latents[controls == token]
            count[token] = count.get(token, 0) + len(chosen)
            token_sum[token] = token_sum.get(token, 0) + chosen.sum(dim=0)
    if total_sum is None:
        raise ValueError("no clips to measure where the controls show")
    mean = total_sum / frames
    total = (total_squares - frames * mean**2).sum(dim=0)  # [h, w], summed over channels
    between = sum((token_sum[token] ** 2 / count[token]).sum(dim=0) for token in count) - frames * (mean**2).sum(dim=0)
    return between, total


def relevance_weights(relevance: torch.Tensor, strength: float) -> torch.Tensor:
    """Loss weights ``[h, w]`` of mean 1: ``1 + strength * relevance / mean(relevance)``, rescaled. At strength 0
    every position weighs 1; at s, a position where the controls explain the mean share weighs (1 + s) times one
    where they explain none, before the rescaling."""
    if strength < 0:
        raise ValueError(f"the relevance weighting's strength is 0 or more, got {strength}")
    mean = relevance.mean()
    scaled = relevance / mean if mean > 0 else torch.zeros_like(relevance)
    weights = 1 + strength * scaled
    return weights / weights.mean()
