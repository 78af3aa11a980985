"""Pretrain the transformer of a base model directory: text-to-video from scratch, every weight trained.

    python -m thematrix.pretrain.transformer --config thematrix/pretrain/transformer_config_mini.py

The project's ``Trainer`` runs it (data, caching, mixed precision, checkpoints, exact resume, logs) with
CogVideoX's own objective: v-prediction, one uniform timestep per clip, the loss on x0 weighted by
1 / (1 - alpha_bar_t). Only what pretraining changes is here: the transformer starts from random weights
(drawn from ``args.seed`` with the shapes of the directory's transformer config) and all of it trains.
The result, ``<output_dir>/model``, is a complete base model directory: stage 1 trains from it as it
would from the downloaded CogVideoX-2B.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import CogVideoXDPMScheduler, CogVideoXTransformer3DModel

from thematrix.cli import run
from thematrix.pretrain.arguments import PretrainArgs
from thematrix.training.trainer import Trainer

DEFAULT_CONFIG = Path(__file__).parent / "transformer_config_mini.py"
TRANSFORMER_FOLDER = "transformer"


class TextToVideoPretrainer(Trainer):
    """Trains every weight of a CogVideoX transformer on captioned clips, from random weights by default."""

    args_class = PretrainArgs
    scheduler_class = CogVideoXDPMScheduler

    def build_transformer(self) -> torch.nn.Module:
        path = self.model_dir
        if self.args.from_scratch:
            config = CogVideoXTransformer3DModel.load_config(path, subfolder=TRANSFORMER_FOLDER)
            torch.manual_seed(self.args.seed)
            transformer = CogVideoXTransformer3DModel.from_config(config)
        else:
            transformer = CogVideoXTransformer3DModel.from_pretrained(path, subfolder=TRANSFORMER_FOLDER)
        return transformer.requires_grad_(True)


def main(argv=None) -> Path:
    return TextToVideoPretrainer.main(DEFAULT_CONFIG, argv)


if __name__ == "__main__":
    run(main)
