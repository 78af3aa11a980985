"""Stage 1: LoRA fine-tuning of CogVideoX on game clips. Run through train_text_to_video_lora.sh."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import CogVideoXTransformer3DModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from stage1.cogvideox.pipeline_cogvideox import GameVideoPipeline
from stage1.cogvideox.scheduler import GameScheduler
from stage1.training.arguments import LoraArgs
from thematrix.cli import run
from thematrix.training.trainer import Trainer

DEFAULT_CONFIG = Path(__file__).parent / "training" / "lora_config.py"
ADAPTER_NAME = "default"  # the name peft gives the one adapter that add_adapter adds


class LoraTrainer(Trainer):
    """Trains LoRA adapters on the transformer's attention projections; the base stays frozen."""

    args_class = LoraArgs
    pipeline_class = GameVideoPipeline
    scheduler_class = GameScheduler

    def build_transformer(self) -> torch.nn.Module:
        transformer = CogVideoXTransformer3DModel.from_pretrained(self.model_dir, subfolder="transformer")
        transformer.requires_grad_(False)
        transformer.add_adapter(
            LoraConfig(
                r=self.args.rank,
                lora_alpha=self.args.lora_alpha,
                init_lora_weights=True,
                target_modules=list(self.args.lora_target_modules),
            )
        )
        return transformer

    @property
    def final_output(self) -> Path:
        return self.output_dir

    def save_final(self, transformer: torch.nn.Module) -> None:
        """LoRA weights in diffusers' format, loadable by CogVideoXPipeline.load_lora_weights, and the run's
        ``GenerationDefaults``, which fuse_lora_weights.py puts in the fused model directory.

        The adapter's peft config goes in as metadata: without it diffusers loads the LoRA with
        lora_alpha = rank, a scale of 1 instead of the trained alpha / rank.
        """
        self.pipeline_class.save_lora_weights(
            str(self.output_dir),
            transformer_lora_layers=get_peft_model_state_dict(transformer),
            transformer_lora_adapter_metadata=transformer.peft_config[ADAPTER_NAME].to_dict(),
            safe_serialization=True,
        )
        self.args.generation_defaults().save(self.output_dir)


def main(argv=None) -> Path:
    return LoraTrainer.main(DEFAULT_CONFIG, argv)


if __name__ == "__main__":
    run(main)
