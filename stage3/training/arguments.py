"""Stage 3 settings: stage 2's plus the Swin-DPM window."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from stage2.training.arguments import SftArgs
from thematrix.config import ConfigError
from thematrix.model_dir import SWIN_DPM_SAMPLER, GenerationDefaults


@dataclass
class SwinArgs(SftArgs):
    # What the model directory records its window was trained for (GenerationDefaults.sampler); not a setting.
    trained_sampler: ClassVar[str] = SWIN_DPM_SAMPLER
    output_dir: str = "outputs/stage3"
    learning_rate: float = 1e-5  # full-parameter fine-tuning of the 2B model
    # The window: G groups in their own noise bands, of W latent frames each. Default: the input model's window
    # (a stage-3 model), else the reference recipe's G = W = 4.
    num_noise_groups: int | None = None
    group_size: int | None = None
    # One clip length: 2 history latent frames (dropped after encoding), 1 condition latent frame and G*W noisy
    # ones. Default: derived from the window, 1 + 4 * (2 + 16) = 73 video frames with G = W = 4.
    frame_buckets: tuple[int, ...] | None = None
    validation_groups: int = 8  # groups a validation stream emits (W*4 video frames each)
    validation_num_inference_steps: int = 20  # divisible by num_noise_groups

    def check(self) -> None:
        """With the window unset, what depends on it is checked once the trainer has taken it from the model."""
        super().check()
        if self.timestep_density_exponent != 1:
            raise ConfigError(
                f"args.timestep_density_exponent is {self.timestep_density_exponent}, but this stage draws one "
                "timestep per noise band, uniformly within it: leave it at 1"
            )
        for name in ("num_noise_groups", "group_size", "validation_groups"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"args.{name} must be at least 1, is {getattr(self, name)}")
        steps = self.validation_num_inference_steps
        if self.num_noise_groups is not None and steps is not None and steps % self.num_noise_groups:
            raise ConfigError(
                f"args.validation_num_inference_steps = {self.validation_num_inference_steps} must be divisible by "
                f"args.num_noise_groups = {self.num_noise_groups}"
            )

    def generation_defaults(self) -> GenerationDefaults:
        return dataclasses.replace(
            super().generation_defaults(),
            num_groups=self.num_noise_groups,
            group_size=self.group_size,
            sampler=self.trained_sampler,
        )
