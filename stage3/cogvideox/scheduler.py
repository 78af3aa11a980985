"""Stage 3's scheduler: stage 2's noise schedule, with Swin-DPM's grouped training and sampling timesteps.

The window shape (G noise groups of W latent frames) is a property of how the model is trained and
sampled, not of the noise schedule, so it is not scheduler config: the trainer sets it once with
``configure_window`` and the saved ``scheduler/`` folder stays a stock diffusers one.
"""

from __future__ import annotations

import torch

from stage2.cogvideox.scheduler import InteractiveScheduler
from thematrix.schedules import GroupedInferenceSchedule, grouped_training_timesteps

CONDITION_FRAMES = 1  # the clean latent frame that starts every window


class SwinScheduler(InteractiveScheduler):
    """CogVideoX's schedule with per-group timesteps: a window is 1 condition frame + G groups of W frames.

    ``configure_window(G, W)`` must be called before ``sample_training_timesteps``; sampling needs only G,
    passed to ``grouped_schedule``.
    """

    num_noise_groups: int | None = None
    group_size: int | None = None

    def configure_window(self, num_noise_groups: int, group_size: int) -> None:
        """Set the training window: ``num_noise_groups`` (G) groups of ``group_size`` (W) latent frames."""
        if num_noise_groups < 1 or group_size < 1:
            raise ValueError(
                f"num_noise_groups and group_size must be positive, got {num_noise_groups} and {group_size}"
            )
        self.num_noise_groups, self.group_size = num_noise_groups, group_size

    @property
    def window_frames(self) -> int:
        """Latent frames of a configured window: 1 + G * W."""
        if self.num_noise_groups is None:
            raise RuntimeError(
                "SwinScheduler's window is not set: call scheduler.configure_window(num_noise_groups, group_size) "
                "first (the stage-3 trainer does it from args.num_noise_groups and args.group_size)"
            )
        return CONDITION_FRAMES + self.num_noise_groups * self.group_size

    def sample_training_timesteps(self, num_latent_frames: int, generator: torch.Generator) -> torch.Tensor:
        """One window's timesteps, LongTensor [1, 1 + G * W] on ``generator.device``: 0 for the condition
        frame, then u + g * T/G for every frame of group g, one u ~ U{0, ..., T/G - 1} per window."""
        if num_latent_frames != self.window_frames:
            raise ValueError(
                f"a clip of {num_latent_frames} latent frames does not fill the Swin-DPM window of 1 + "
                f"{self.num_noise_groups} x {self.group_size} = {self.window_frames} latent frames; make "
                f"args.frame_buckets one clip length of exactly that many latent frames"
            )
        return grouped_training_timesteps(
            1, self.num_noise_groups, self.group_size, self.config.num_train_timesteps, generator
        )

    def grouped_schedule(self, num_inference_steps: int, num_groups: int) -> GroupedInferenceSchedule:
        """The sampling schedule: ``num_inference_steps`` (divisible by ``num_groups``) over ``num_groups`` bands."""
        return GroupedInferenceSchedule(self, num_inference_steps, num_groups)
