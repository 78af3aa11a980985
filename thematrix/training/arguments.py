"""Every training setting shared by the four stages, with its default and what it does.

Defaults follow the reference recipe for CogVideoX-2B (480x720, buckets of 17/33/65 frames,
AdamW with betas (0.9, 0.95), bf16). A stage subclasses ``TrainingArgs`` to add its own settings;
its config file assigns only what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from diffusers.optimization import SchedulerType

from thematrix.config import ConfigError, LocalPath, ModelPath, PathSetting, StrictArgs
from thematrix.model_dir import NO_TEXT_GUIDANCE, GenerationDefaults

LATEST_CHECKPOINT = "latest"


# A launch's first optimizer steps compile, fill the allocator and start the data loader's workers: a trace
# (args.profile_steps) begins after them.
PROFILE_WARMUP_STEPS = 3


@dataclass
class TrainingArgs(StrictArgs):
    # --- model and data -------------------------------------------------------------------------
    pretrained_model_name_or_path: ModelPath = "path/to/model"  # a diffusers CogVideoX directory, or a Hugging Face id
    data_root: LocalPath = "path/to/data_root"  # folder the index's clip paths are relative to
    index_file: LocalPath = "path/to/index_file"  # JSON index (see data/README.md)
    allow_paths_outside_data_root: bool = False  # accept index entries whose path leads outside data_root
    output_dir: LocalPath = "outputs/run"  # checkpoints, logs, validation videos and the final model

    # --- clips ----------------------------------------------------------------------------------
    # the clips' frame size; default: the size the input model records (a stage's output), else its native size
    # (its VAE config's sample size: 480x720 for CogVideoX-2B); a size that contradicts the record is an error
    height: int | None = None
    width: int | None = None
    fps: int | None = (
        None  # clips are resampled to this frame rate; default: the input model's, else the footage's (its slowest clip's)
    )
    frame_buckets: tuple[int, ...] = (
        17,
        33,
        65,
    )  # frames per clip, each 4k+1 (the VAE compresses time 4x); a clip takes the largest that fits
    max_text_seq_length: int = 226  # T5 tokens per caption (CogVideoX's length)
    # Chance a clip trains with the empty caption, so the unconditional prediction that guidance subtracts
    # is trained on game clips; drawn per clip, independently of stage 2's control dropout.
    caption_p_zero: float = 0.1
    dataloader_num_workers: int = 2
    shuffle: bool = True  # a new clip order each epoch, a function of (seed, epoch)

    # --- optimisation ---------------------------------------------------------------------------
    seed: int = 42
    train_batch_size: int = 1  # per process
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 10_000  # optimizer steps
    learning_rate: float = 1e-5
    lr_scheduler: str = "constant_with_warmup"  # any name diffusers.optimization.get_scheduler takes
    lr_warmup_steps: int = 100
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    # AdamW with its two moment estimates stored in 8 bits, scaled per block of 256 (bitsandbytes' AdamW8bit; pip
    # install bitsandbytes): 2 bytes of optimizer state a trained weight instead of 8. Stage 3's step at 2B peaked at
    # 24.9 GiB with 8-bit moments against 37.3 with float32 ones, which step about 0.1 s faster (bench/RESULTS.md).
    # Tensors of fewer than 4,096 values (norms, biases) keep float32 moments. It changes the updates slightly, so a
    # run resumes with the setting it started with. Data parallel only (one process or DDP): FSDP and DeepSpeed split
    # the optimizer state over the processes already.
    use_8bit_adam: bool = False
    # Where the training timesteps fall: t = T * u^(1 / e) for u uniform on [0, 1). 1 is CogVideoX's uniform draw;
    # e > 1 draws more of them at high noise (density proportional to t^(e - 1)), where a clip's global layout and
    # motion form. Stages 1 and 2 and pretraining; stages 3 and 4 draw one timestep per noise band and take 1 only.
    # (At 3, stage 2 of the learning proof followed the steering less: learning/README.md.)
    timestep_density_exponent: float = 1.0
    mixed_precision: str = "auto"  # "auto" = bf16 on a GPU, no (fp32) on the CPU; or "no", "bf16", "fp16"
    gradient_checkpointing: bool = True  # recompute activations in backward: far less memory, ~30% more time
    # With gradient_checkpointing: keep each block's attention outputs instead of recomputing the attention in the
    # backward (the same weights; one activation of a block's size more a block). Off until bench/RESULTS.md has
    # measured it at 2B.
    checkpoint_keeps_attention: bool = False
    # With gradient_checkpointing: the block inputs it keeps for the backward wait in pinned host memory, copied on a
    # side stream and fetched back one block ahead (the same values; at 2B and 480x720, 2.5 GiB less GPU memory for
    # 5 GB of copies a step, which overlap the blocks' work). Off until bench/RESULTS.md has measured it at 2B.
    offload_checkpoints: bool = False
    # Train the blocks' attention and feed-forward linear layers through FP8 matmuls (torchao's float8 training;
    # GPUs with FP8 tensor cores, refused elsewhere before any weight loads; pip install torchao). It changes the
    # values, so a run resumes with the setting it started with. Off until bench/RESULTS.md has measured it at 2B.
    fp8_training: bool = False
    allow_tf32: bool = True
    # torch.compile each transformer block (regional; stage 4's teacher and target too): faster GPU steps after a
    # compile of a minute or so, which the first steps pay; small models, whose steps are bound by the host's
    # operator calls, gain most. Off by default until bench/RESULTS.md has measured it on every stage.
    compile_blocks: bool = False

    # --- VAE and caching ------------------------------------------------------------------------
    enable_slicing: bool = True  # encode/decode one video of a batch at a time
    enable_tiling: bool = False  # encode/decode in spatial tiles: less memory, slower
    cache_latents: bool = False  # encode every clip and caption once, before training
    cache_dir: LocalPath | None = None  # default: <output_dir>/cache

    # --- checkpoints ----------------------------------------------------------------------------
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = (
        3  # the last this many are kept: older ones go once a newer one is complete; None keeps all
    )
    resume_from_checkpoint: Annotated[str, PathSetting(keywords=(LATEST_CHECKPOINT,))] | None = (
        LATEST_CHECKPOINT  # "latest", a checkpoint path, or None to start fresh
    )

    # --- when a run goes wrong (README: "When a run goes wrong") ----------------------------------
    max_nonfinite_steps: int = 0  # optimizer steps with a non-finite loss or gradient norm to skip (no update; counted, logged); past this many the run stops
    stop_on_validation_failure: bool = True  # a failing validation (e.g. out of memory) saves a checkpoint and stops the run; False logs it and trains on

    # --- validation -----------------------------------------------------------------------------
    # One video each; default: the empty caption where caption_p_zero = 1 (the only caption the run trains), else
    # the input model's prompt, else the index's first caption.
    validation_prompts: tuple[str, ...] | None = None
    validation_steps: int = 500  # every this many optimizer steps; 0 disables
    validation_num_frames: int = 49
    validation_num_inference_steps: int = 50
    # Text guidance; default: what the trained model will record (recorded_guidance_scale: 1, no guidance, where
    # caption_p_zero = 1), else CogVideoX's 6.
    validation_guidance_scale: float | None = None
    validation_loss_clips: int = 4  # first clips whose loss at fixed noise and timesteps is measured at each validation: a steadier curve than the training loss; 0 skips it

    # --- logging --------------------------------------------------------------------------------
    report_to: str = "tensorboard"  # any tracker accelerate supports (tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio), several joined by commas, "all" installed ones, or "none"
    logging_steps: int = 1
    # Trace this many optimizer steps with torch's profiler, after the launch's first PROFILE_WARMUP_STEPS, into
    # <output_dir>/profile.json (where the time goes: device busy share, work by kind, host operator calls a step, top
    # kernels) and profile_trace.json.gz; main process only; 0 traces none.
    profile_steps: int = 0

    def check(self) -> None:
        """Consistency checks that need no files; the trainer checks paths and the model."""
        if self.frame_buckets is not None and not self.frame_buckets:
            raise ConfigError("args.frame_buckets is empty; give at least one clip length, e.g. (17, 33, 65)")
        for name in (
            "train_batch_size",
            "gradient_accumulation_steps",
            "max_train_steps",
            "checkpointing_steps",
            "fps",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"args.{name} must be at least 1, is {getattr(self, name)}")
        if not 0 <= self.caption_p_zero <= 1:
            raise ConfigError(f"args.caption_p_zero is a probability, in [0, 1]; got {self.caption_p_zero}")
        if self.timestep_density_exponent <= 0:
            raise ConfigError(
                f"args.timestep_density_exponent must be above 0 (1 draws timesteps uniformly), is "
                f"{self.timestep_density_exponent}"
            )
        if self.profile_steps < 0:
            raise ConfigError(f"args.profile_steps must be 0 (no trace) or more, is {self.profile_steps}")
        if self.profile_steps and PROFILE_WARMUP_STEPS + self.profile_steps > self.max_train_steps:
            raise ConfigError(
                f"args.profile_steps = {self.profile_steps} traces steps {PROFILE_WARMUP_STEPS + 1} to "
                f"{PROFILE_WARMUP_STEPS + self.profile_steps} of a launch, past args.max_train_steps = "
                f"{self.max_train_steps}; lower args.profile_steps or raise args.max_train_steps"
            )
        if self.checkpoint_keeps_attention and not self.gradient_checkpointing:
            raise ConfigError(
                "args.checkpoint_keeps_attention = True without gradient checkpointing keeps every activation "
                "already: set args.gradient_checkpointing = True, or leave checkpoint_keeps_attention False"
            )
        if self.offload_checkpoints and not self.gradient_checkpointing:
            raise ConfigError(
                "args.offload_checkpoints = True without gradient checkpointing has no checkpointed inputs to "
                "offload: set args.gradient_checkpointing = True, or leave offload_checkpoints False"
            )
        schedules = [schedule.value for schedule in SchedulerType]
        if self.lr_scheduler not in schedules:
            raise ConfigError(f"args.lr_scheduler is {self.lr_scheduler!r}; use one of {', '.join(schedules)}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(f"args.mixed_precision is {self.mixed_precision!r}; use auto, no, bf16 or fp16")
        for name in ("max_nonfinite_steps", "validation_loss_clips"):
            if getattr(self, name) < 0:
                raise ConfigError(f"args.{name} must be at least 0, is {getattr(self, name)}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ConfigError(
                f"args.checkpoints_total_limit must be at least 1 (or None to keep all), is {self.checkpoints_total_limit}"
            )

    def recorded_guidance_scale(self) -> float | None:
        """The text guidance the trained model samples at by default: none where every caption is dropped (the
        stage never trained a caption's effect), else the sampler's own (None)."""
        return NO_TEXT_GUIDANCE if self.caption_p_zero == 1 else None

    def generation_defaults(self) -> GenerationDefaults:
        """What the trained model's directory records of this run (settings resolved by the trainer)."""
        return GenerationDefaults(
            fps=self.fps,
            height=self.height,
            width=self.width,
            num_frames=max(self.frame_buckets),
            prompt=self.validation_prompts[0],
            guidance_scale=self.recorded_guidance_scale(),
        )
