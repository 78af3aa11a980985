"""Settings of the two pretraining steps, with their defaults and what they do: the VAE's (``VaeArgs``) and
the transformer's (``PretrainArgs``, the shared training settings plus its own)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from thematrix.config import ConfigError, StrictArgs
from thematrix.training.arguments import TrainingArgs

SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class VaeArgs(StrictArgs):
    # --- model and data -------------------------------------------------------------------------
    pretrained_model_name_or_path: str = (
        "path/to/model"  # model directory whose VAE trains (python -m thematrix.base_model)
    )
    data_root: str = "path/to/data_root"  # folder the index's clip paths are relative to
    index_file: str = "path/to/index_file"  # JSON index (see data/README.md)
    output_dir: str = "outputs/pretrain-vae"  # <output_dir>/model and <output_dir>/logs

    # --- clips ----------------------------------------------------------------------------------
    height: int | None = None  # None = the VAE's sample_height
    width: int | None = None  # None = the VAE's sample_width
    fps: int = 8  # clips are resampled to this frame rate
    clip_frames: int = 9  # frames per training crop, 4k+1: 1 + 2 latent frame pairs, one whole decoder batch
    dataloader_num_workers: int = 2

    # --- optimisation ---------------------------------------------------------------------------
    seed: int = 0
    train_batch_size: int = 8
    max_train_steps: int = 2_000
    learning_rate: float = 5e-4  # from scratch, as small convolutional autoencoders train
    lr_warmup_steps: int = 100
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    adam_weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    kl_weight: float = 1e-6  # per-element KL next to the per-element L1: keeps latents bounded, barely blurs them
    mixed_precision: str = "auto"  # "auto" = bf16 on a GPU, float32 on the CPU; or "no", "bf16"

    # --- output ---------------------------------------------------------------------------------
    scaling_clips: int = 64  # crops encoded after training to measure the latents' std
    save_dtype: str = "bfloat16"  # the stages run the VAE in bf16 on GPUs; half the bytes of float32
    report_to: str = "tensorboard"  # "tensorboard" or "none"

    def check(self) -> None:
        for name in ("train_batch_size", "max_train_steps", "scaling_clips", "fps", "clip_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"args.{name} must be at least 1, is {getattr(self, name)}")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise ConfigError(f"args.mixed_precision is {self.mixed_precision!r}; use auto, no or bf16")
        if self.save_dtype not in SAVE_DTYPES:
            raise ConfigError(f"args.save_dtype is {self.save_dtype!r}; use one of {sorted(SAVE_DTYPES)}")
        if self.report_to not in ("tensorboard", "none"):
            raise ConfigError(f"args.report_to is {self.report_to!r}; use tensorboard or none")


@dataclass
class PretrainArgs(TrainingArgs):
    output_dir: str = "outputs/pretrain"
    learning_rate: float = 3e-4  # from scratch: a small transformer takes large steps (the stages fine-tune at 1e-5)
    # True: random weights drawn from args.seed, so the directory's transformer weights are not read (only its
    # config); False: continue training the directory's weights.
    from_scratch: bool = True
