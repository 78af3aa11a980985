"""The inverse-dynamics model (IDM): which control was held, seen from the frames it moved.

A latent frame's control token is the control held while the game moved to the last of its video frames
(data/README.md), and a latent frame spans ``c`` video frames (``c = vae.config.temporal_compression_ratio``).
The IDM therefore reads a window of ``c + 1`` frames, the latent frame's ``c`` frames and the one before
them, and classifies the control token of the window's last frame. On real footage every frame from the
``c``-th on ends a window; on generated video the windows end at the last frame of each latent frame, so the
IDM scores each commanded token exactly once.

It is a small 2D convolutional network over the window's frames stacked as channels, with the spatial
layout kept to the end (a car turning left and right differs by where things move, which a global
average would lose). Its penultimate layer gives the features that ``metrics.frechet_distance`` compares.
It is saved as a diffusers model directory (config + weights) that records its vocabulary, its input size
and a fingerprint of the VAE whose reconstructions it was trained on.

A game whose screen displays the pressed keys (CarRacing's HUD draws the steering and the wheels' spin) lets an
IDM read the keys from that display alone; ``ignored_box`` blanks such a region in every frame the IDM reads,
in training and in scoring, so that it reads the keys from how the scene moves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

logger = logging.getLogger(__name__)

GROUP_NORM_GROUPS = 8
STRIDE = 2
RGB = 3
BOX_EDGES = ("top", "bottom", "left", "right")


def check_ignored_box(box: Sequence[int], height: int, width: int) -> None:
    """Refuse a box that is not ``top < bottom <= height``, ``left < right <= width`` in pixels."""
    if not box:
        return
    if len(box) != len(BOX_EDGES):
        raise ValueError(f"ignored_box {list(box)}: give {len(BOX_EDGES)} pixel edges, {' '.join(BOX_EDGES)}")
    top, bottom, left, right = box
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(
            f"ignored_box {list(box)}: give 0 <= top < bottom <= {height} and 0 <= left < right <= {width} "
            f"(pixel rows and columns of the {height}x{width} frames the IDM reads)"
        )


def window_ends(num_frames: int, num_latent_frames: int, frames_per_latent: int) -> list[int | None]:
    """Index of the last frame of each of the video's last ``num_latent_frames`` latent frames, which fill its
    last ``num_latent_frames * frames_per_latent`` frames; None for a latent frame that no frame precedes."""
    first = num_frames - num_latent_frames * frames_per_latent
    if first < 0:
        raise ValueError(
            f"{num_latent_frames} latent frames of {frames_per_latent} video frames need {num_latent_frames * frames_per_latent} "
            f"frames; the video has {num_frames}"
        )
    ends = [first + (index + 1) * frames_per_latent - 1 for index in range(num_latent_frames)]
    return [end if end - frames_per_latent >= 0 else None for end in ends]


def gather_windows(frames: torch.Tensor, ends: torch.Tensor, frames_per_latent: int) -> torch.Tensor:
    """Windows ``[len(ends), c + 1, 3, H, W]`` of ``frames`` ``[n, 3, H, W]``, each ending at its entry of ``ends``."""
    offsets = torch.arange(-frames_per_latent, 1, device=ends.device)
    return frames[ends[:, None] + offsets]


def as_model_input(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float in [-1, 1]; float frames pass unchanged."""
    return frames.float() / 127.5 - 1.0 if frames.dtype == torch.uint8 else frames.float()


class InverseDynamicsModel(ModelMixin, ConfigMixin):
    """Control token of the last frame of a ``c + 1``-frame window.

    Args:
        control_tokens: the vocabulary's tokens, in id order (the model's classes).
        control_phrases, control_null_phrase: the rest of the footage's vocabulary, kept so that commands can
            be drawn from it for a model without controls.
        frames_per_latent: ``c``, the VAE's temporal compression; windows hold ``c + 1`` frames.
        height, width: frame size the model reads.
        fps: frame rate of the footage it learnt from; real clips are read at it.
        channels: output channels of the stride-2 convolutions.
        feature_dim: width of the penultimate layer (the features of the Frechet distance).
        dropout: on the features, in training.
        vae_fingerprint: the VAE whose reconstructions it learnt from (``footage.weights_fingerprint``).
        ignored_box: (top, bottom, left, right) pixel edges of a region blanked in every frame it reads
            (rows top..bottom-1, columns left..right-1); empty to read the whole frame.
    """

    @register_to_config
    def __init__(
        self,
        control_tokens: Sequence[str] = (),
        control_phrases: Sequence[str] = (),
        control_null_phrase: str = "",
        frames_per_latent: int = 4,
        height: int = 96,
        width: int = 144,
        fps: float = 10.0,
        channels: Sequence[int] = (32, 64, 64, 64),
        feature_dim: int = 128,
        dropout: float = 0.1,
        vae_fingerprint: str = "",
        ignored_box: Sequence[int] = (),
    ):
        super().__init__()
        if not control_tokens:
            raise ValueError("an inverse-dynamics model needs the control tokens it tells apart")
        check_ignored_box(ignored_box, height, width)
        layers, in_channels = [], RGB * (frames_per_latent + 1)
        out_height, out_width = height, width
        for out_channels in channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, stride=STRIDE, padding=1),
                nn.GroupNorm(GROUP_NORM_GROUPS, out_channels),
                nn.SiLU(),
            ]
            in_channels = out_channels
            out_height, out_width = (out_height - 1) // STRIDE + 1, (out_width - 1) // STRIDE + 1
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        self.features = nn.Sequential(nn.Linear(in_channels * out_height * out_width, feature_dim), nn.SiLU())
        self.feature_dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(feature_dim, len(control_tokens))

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(self.config.control_tokens)

    @property
    def window_frames(self) -> int:
        return self.config.frames_per_latent + 1

    def embed(self, windows: torch.Tensor) -> torch.Tensor:
        """Features ``[B, feature_dim]`` of windows ``[B, c + 1, 3, H, W]`` (uint8, or float in [-1, 1])."""
        expected = (self.window_frames, RGB, self.config.height, self.config.width)
        if tuple(windows.shape[1:]) != expected:
            raise ValueError(f"windows must be [B, {', '.join(map(str, expected))}], got {list(windows.shape)}")
        return self.features(self.encoder(self.blank_ignored_box(as_model_input(windows)).flatten(1, 2)))

    def blank_ignored_box(self, windows: torch.Tensor) -> torch.Tensor:
        """Windows with ``ignored_box`` set to 0, mid-grey in [-1, 1]: nothing there tells the keys apart."""
        if not self.config.ignored_box:
            return windows
        top, bottom, left, right = self.config.ignored_box
        blanked = windows.clone()
        blanked[..., top:bottom, left:right] = 0.0
        return blanked

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, len(control_tokens)]``."""
        return self.classifier(self.feature_dropout(self.embed(windows)))


@dataclass
class IdmTraining:
    """How the IDM trains: random windows of the real clips, AdamW, cross-entropy."""

    steps: int = 3_000
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    # Weight each class by the inverse of its frequency: commands in evaluation are drawn uniformly over the
    # vocabulary, so every class should be learnt as well as the footage allows, not only the frequent ones.
    balance_classes: bool = True
    seed: int = 0


def train_idm(
    model: InverseDynamicsModel,
    frames: torch.Tensor,
    ends: torch.Tensor,
    labels: torch.Tensor,
    settings: IdmTraining,
) -> list[float]:
    """Train on windows of ``frames`` ``[N, 3, H, W]`` (uint8, every clip's frames end to end) ending at
    ``ends`` ``[M]`` with token ids ``labels`` ``[M]``; returns the loss of every step."""
    generator = torch.Generator(device=frames.device).manual_seed(settings.seed)
    num_classes = len(model.tokens)
    counts = torch.bincount(labels, minlength=num_classes).float()
    weights = None
    if settings.balance_classes:
        weights = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.steps
    )
    losses = []
    model.train()
    for step in range(settings.steps):
        chosen = torch.randint(len(ends), (settings.batch_size,), generator=generator, device=frames.device)
        windows = gather_windows(frames, ends[chosen], model.config.frames_per_latent)
        loss = nn.functional.cross_entropy(model(windows), labels[chosen], weight=weights)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % max(1, settings.steps // 10) == 0:
            logger.info("IDM step %d/%d: loss %.4f", step + 1, settings.steps, loss.item())
    return losses


@torch.no_grad()
def predict(
    model: InverseDynamicsModel, frames: torch.Tensor, ends: torch.Tensor, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted token ids ``[M]``, features ``[M, feature_dim]``) of the windows of ``frames`` ending at ``ends``."""
    model.eval()
    device = next(model.parameters()).device
    ids, features = [], []
    for start in range(0, len(ends), batch_size):
        windows = gather_windows(
            frames, ends[start : start + batch_size].to(frames.device), model.config.frames_per_latent
        )
        embedded = model.embed(windows.to(device))
        ids.append(model.classifier(embedded).argmax(dim=1).cpu())
        features.append(embedded.float().cpu())
    if not ids:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, model.config.feature_dim)
    return torch.cat(ids), torch.cat(features)
