"""Stage 1's scheduler: CogVideoX's own noise schedule, with uniform training timesteps.

Later stages subclass ``GameScheduler`` and override ``sample_training_timesteps`` (Swin-DPM
draws one timestep per latent frame) and the sampling step.
"""

from __future__ import annotations

import torch
from diffusers import CogVideoXDPMScheduler


class GameScheduler(CogVideoXDPMScheduler):
    """CogVideoX's DPM scheduler, loadable from any CogVideoX ``scheduler/`` folder."""

    def sample_training_timesteps(self, num_latent_frames: int, generator: torch.Generator) -> torch.Tensor:
        """One sample's timestep, uniform over the training schedule: shape [1], shared by all frames."""
        return torch.randint(0, self.config.num_train_timesteps, (1,), generator=generator, device=generator.device)
