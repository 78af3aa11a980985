"""Stage 1's pipeline: stock CogVideoX text-to-video, loaded from a model directory or a Hugging Face id's snapshot."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

from stage1.cogvideox.scheduler import GameScheduler
from thematrix.model_dir import (
    ModelDirError,
    check_model_dir,
    load_components,
    transformer_class_name,
)


def default_device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """bf16 on a GPU, float32 on the CPU (where bf16 convolutions are slow)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


class GameVideoPipeline(CogVideoXPipeline):
    """CogVideoX text-to-video with the stage's scheduler and native sizes read from the model."""

    scheduler_class = GameScheduler
    transformer_class = CogVideoXTransformer3DModel

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        lora_dir: str | Path | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        setting: str = "--model_dir",
    ) -> GameVideoPipeline:
        """Load a model directory, or a Hugging Face id's cached snapshot (and optionally a LoRA), onto ``device``."""
        default_device, default_dtype = default_device_and_dtype()
        device, dtype = device or default_device, dtype or default_dtype
        model_dir = cls.check_stage_model(model_dir, setting)
        pipeline = cls(**load_components(model_dir, dtype, cls.scheduler_class, cls.transformer_class))
        if lora_dir is not None:
            pipeline.load_lora_weights(str(lora_dir))
        return pipeline.to(device)

    @classmethod
    def check_stage_model(cls, model_dir: str | Path, setting: str = "--model_dir") -> Path:
        """The local directory of ``model_dir`` (a hub id's snapshot), refused if incomplete or if its transformer is
        not ``transformer_class``."""
        model_dir = check_model_dir(model_dir, setting)
        found = transformer_class_name(model_dir)
        if found != cls.transformer_class.__name__:
            raise ModelDirError(
                f"{setting} {model_dir}: its transformer is a {found}, but {cls.__name__} needs a "
                f"{cls.transformer_class.__name__}; pass the model directory written by this stage's training"
            )
        return model_dir

    @property
    def native_size(self) -> tuple[int, int, int]:
        """(frames, height, width) the base model was trained at, from its configs."""
        return self.transformer.config.sample_frames, self.vae.config.sample_height, self.vae.config.sample_width
