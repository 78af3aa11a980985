"""Stage 3 settings: stage 2's plus the Swin-DPM window."""

from __future__ import annotations

from dataclasses import dataclass

from stage2.training.arguments import SftArgs


@dataclass
class SwinArgs(SftArgs):
    output_dir: str = "outputs/stage3"
    learning_rate: float = 1e-5  # full-parameter fine-tuning of the 2B model
    num_noise_groups: int = 4  # G: groups in the window, each in its own noise band
    group_size: int = 4  # W: latent frames per group
    # 2 history latent frames (dropped after encoding), 1 condition latent frame and G*W noisy ones:
    # 1 + 4 * (2 + 16) = 73 video frames with G = W = 4.
    frame_buckets: tuple[int, ...] = (73,)
    validation_groups: int = 8  # groups a validation stream emits (W*4 video frames each)
    validation_num_inference_steps: int = 20  # divisible by num_noise_groups
