"""Stage 1 settings: the shared training settings plus the LoRA's."""

from __future__ import annotations

from dataclasses import dataclass

from thematrix.training.arguments import TrainingArgs


@dataclass
class LoraArgs(TrainingArgs):
    output_dir: str = "outputs/stage1-lora"
    rank: int = 256  # LoRA rank of each adapted projection
    lora_alpha: float = 256.0  # scale = lora_alpha / rank
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections
