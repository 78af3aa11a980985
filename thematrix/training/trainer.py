"""The training loop every stage shares: one optimizer step after another, and the checks that keep it safe.

A stage subclasses ``Trainer`` and overrides hooks, each called at one place of ``setup`` or of the loop:

- ``check_settings()``: complete and check the settings against the model directory and the footage, before
  any weight loads (stage 2: the vocabulary; stage 3: the window);
- ``build_transformer()``: load the transformer and mark which parameters train;
- ``after_setup()``: build what the stage needs besides, once the transformer is prepared (stage 4: the
  teacher and the EMA target);
- ``encode_videos(videos)`` and ``cache_fingerprint()``: how clips become latents, and what keys the cache;
- ``sample_timesteps(num_latent_frames, generator)`` and ``noisy_latents(latents, noise, timesteps)``: the
  noising, drawn in the stage's own code (stage 3: one timestep per noise group, the condition frame clean);
- ``model_kwargs(batch, generators)``: extra transformer inputs (stage 2: the controls, with dropout);
- ``loss_mask(latents)``, or the whole ``compute_loss(batch, first_sample_position)`` (stage 4);
- ``after_optimizer_step()``: after each applied optimizer step, before its checkpoint (stage 4: the EMA);
- ``validation_videos()``: what a validation generates;
- ``save_final(transformer)`` and ``final_output``: what the run leaves for the next stage.

The loop reads on its own: checkpoints live in ``checkpoint``, the clips and their latent cache in
``clips``, stop signals, non-finite values and disk space in ``run_safety``, trackers, ``metrics.jsonl``
and ``metrics.png`` in ``metrics``. README's "When a run goes wrong" says what each check does.

Exact resume: noise and timesteps for the n-th sample of the run come from a generator seeded by
(seed, n), the data order of epoch e is a function of (seed, e) over the samples of all processes together (whatever
their number and batch size, as far as frame buckets allow: ``BucketBatchSampler``), and checkpoints hold the trainable
weights (as the training mode splits them: ``sharding``), optimizer, LR schedule (which counts optimizer
steps, whatever the number of processes), the data position in samples (``DataPosition``), RNG states and
what a stage registers (stage 4's EMA target). A resumed run therefore takes the same steps as an
uninterrupted one; resumed with other samples per step (another number of processes), it continues its
schedule at the same optimizer step and its data after the samples already drawn.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed
from diffusers import CogVideoXPipeline
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm
from transformers import T5Config

from thematrix import profiling
from thematrix.acceleration import (
    CheckpointOffload,
    check_fp8,
    compile_blocks,
    convert_fp8_training,
    enable_checkpointing,
)
from thematrix.config import ConfigError, first_given, parse_command_line, setting_from_model
from thematrix.controls import ControlVocabulary
from thematrix.data.dataset import collate_batch, footage_fps
from thematrix.model_dir import (
    DEFAULT_TEXT_GUIDANCE,
    EMPTY_CAPTION,
    SCHEDULER,
    TEXT_ENCODER,
    GenerationDefaults,
    check_model_dir,
    generation_defaults,
    load_components,
    save_model_dir,
    transformer_config,
    vae_architecture,
)
from thematrix.schedules import CogVideoXTrainingSchedule
from thematrix.training.arguments import PROFILE_WARMUP_STEPS, TrainingArgs
from thematrix.training.checkpoint import RESOLVED_CONFIG, SAMPLES_PER_STEP, Checkpoints
from thematrix.training.clips import (
    cache_entry_bytes,
    cached_clips,
    clip_dataset,
    encoder_fingerprint,
    load_samples,
    training_batches,
)
from thematrix.training.metrics import RunMetrics, tracker_names
from thematrix.training.run_safety import (
    RunFailed,
    RunPreempted,
    StopSignals,
    any_process,
    disk_space_problem,
    main_process_decides,
    nonfinite_parameters,
    stability_advice,
)
from thematrix.training.sharding import (
    TrainingMode,
    check_model_for_mode,
    configure_training_mode,
    training_mode,
    unsharded_model,
)
from thematrix.video import (
    can_write_mp4,
    draw_control_overlay,
    pipeline_video_to_signed,
    tensor_to_uint8_frames,
    write_mp4,
)

logger = logging.getLogger(__name__)

FINAL_MODEL = "model"
CHECKPOINT_DIR = "checkpoints"
# Spreads per-sample seeds so that (seed, n) pairs of nearby runs never collide.
SEED_STRIDE = 1_000_003
# Sample positions of the validation loss: far beyond any run's samples, so no training step draws their noise.
VALIDATION_LOSS_POSITION = 2**40
DATA_POSITION = "data_position"  # the trainer state's record of a DataPosition
# Weight tensors of fewer values keep float32 moments under args.use_8bit_adam: their 8-bit scales would save little.
MIN_8BIT_MOMENT_SIZE = 4096


def sample_generator(seed: int, sample_position: int, device: torch.device) -> torch.Generator:
    """The generator of the ``sample_position``-th training sample of a run: resume- and batch-invariant."""
    return torch.Generator(device=device).manual_seed(seed * SEED_STRIDE + sample_position)


def resolve_validation_sampling(args: TrainingArgs, model_prompt: str | None, first_caption: str) -> None:
    """Complete the validation prompts and text guidance as the trained model will be sampled by default: a run
    that drops every caption under the empty caption (the only one it trains), without text guidance; any other
    under the input model's prompt (``model_prompt``; its record's, else None), else the footage's first caption,
    at CogVideoX's guidance. An empty ``model_prompt`` is a model that trained no caption: the footage's is taken."""
    if not args.validation_prompts:
        args.validation_prompts = (EMPTY_CAPTION,) if args.caption_p_zero == 1 else (model_prompt or first_caption,)
    args.validation_guidance_scale = first_given(
        args.validation_guidance_scale, args.recorded_guidance_scale(), DEFAULT_TEXT_GUIDANCE
    )


def adamw(params: list[torch.nn.Parameter], args: TrainingArgs) -> torch.optim.Optimizer:
    """AdamW as ``args`` set it: torch's fused AdamW, or bitsandbytes' AdamW8bit under ``args.use_8bit_adam``
    (checked at start by ``configure_training_mode``). Fused, each tensor's update is one kernel: torch's default
    (foreach) steps a list's tensors together through temporaries the size of all the trained weights (about 8 GiB
    for stage 3's 2.24B, the step's memory peak). bitsandbytes updates each tensor with one kernel launch; torchao's
    AdamW8bit, a compiled call a tensor, cost the host about 0.6 ms each, 0.54 s a 2B step (bench/RESULTS.md)."""
    settings = dict(
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    if args.use_8bit_adam:
        from bitsandbytes.optim import AdamW8bit  # optional: installed with the adam8bit extra

        return AdamW8bit(params, **settings, min_8bit_size=MIN_8BIT_MOMENT_SIZE)
    return torch.optim.AdamW(params, **settings, fused=True)


@dataclass
class DataPosition:
    """Where a run stands in its data, in samples of all processes together: a run resumed with other samples per
    micro-batch (processes x train_batch_size) continues after the samples already drawn."""

    epoch: int = 0
    epoch_samples: int = 0  # samples drawn of this epoch's order
    samples_drawn: int = 0  # samples drawn by the run: the position of the next one (``sample_generator``)

    @classmethod
    def from_trainer_state(cls, state: dict[str, Any], samples_per_step: int, epoch_length: int) -> DataPosition:
        """The position a checkpoint's trainer state records; a checkpoint written before it was recorded drew
        ``samples_per_step`` samples a step (its own, else this run's), in epochs of ``epoch_length`` samples."""
        if DATA_POSITION in state:
            return cls(**state[DATA_POSITION])
        drawn = state["global_step"] * state.get(SAMPLES_PER_STEP, samples_per_step)
        epoch, drawn_of_epoch = divmod(drawn, epoch_length)
        return cls(epoch=epoch, epoch_samples=drawn_of_epoch, samples_drawn=drawn)

    def align(self, per_micro_batch: int, epoch_micro_batches: int) -> int:
        """Move on to the first micro-batch of ``per_micro_batch`` samples that starts after the samples drawn, the next
        epoch's first once this epoch's ``epoch_micro_batches`` are drawn; returns the samples passed over (the part
        of a micro-batch that a resumed run's larger or shifted micro-batches cannot draw)."""
        passed = -self.epoch_samples % per_micro_batch
        self.epoch_samples += passed
        self.samples_drawn += passed
        if self.epoch_samples >= per_micro_batch * epoch_micro_batches:
            self.epoch, self.epoch_samples = self.epoch + 1, 0
        return passed

    def advance(self, samples: int) -> None:
        self.epoch_samples += samples
        self.samples_drawn += samples


def draw_dropout(generators: list[torch.Generator], probability: float) -> torch.Tensor:
    """BoolTensor [B]: whether each sample drops a condition, one draw from each sample's own generator."""
    return torch.stack(
        [torch.rand((), generator=generator, device=generator.device) < probability for generator in generators]
    )


class Trainer:
    """Trains a CogVideoX transformer on game clips; see the module docstring for the stage hooks."""

    args_class = TrainingArgs
    pipeline_class = CogVideoXPipeline
    scheduler_class: (
        type  # the stage's diffusers scheduler (stage1.cogvideox.scheduler.GameScheduler and its subclasses)
    )

    def __init__(self, args: TrainingArgs):
        args.check()
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.global_step = 0
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite loss or gradient (args.max_nonfinite_steps)
        self.data_position = DataPosition()
        self.history: list[dict[str, float]] = []  # this process's optimizer steps: loss, lr, step time, ...
        self.stop_signals = StopSignals()
        self.vocabulary: ControlVocabulary | None = None  # the controls clips carry: set by a stage that has them

    # ---------------------------------------------------------------- stage hooks
    def build_transformer(self) -> torch.nn.Module:
        """Load the transformer (from ``self.model_dir``) and mark which parameters train. Stages must override."""
        raise NotImplementedError

    def after_setup(self) -> None:
        """Build what the stage needs besides the trained transformer, once everything is loaded and prepared."""

    def sample_timesteps(self, num_latent_frames: int, generator: torch.Generator) -> torch.Tensor:
        """One sample's training timesteps, [1] (shared by its frames) or [1, F]: uniform over the schedule, or
        denser at high noise with ``args.timestep_density_exponent`` above 1."""
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        exponent = self.args.timestep_density_exponent
        if exponent == 1:
            return torch.randint(0, num_train_timesteps, (1,), generator=generator, device=generator.device)
        uniform = torch.rand((1,), generator=generator, device=generator.device)
        return (num_train_timesteps * uniform ** (1 / exponent)).long().clamp(max=num_train_timesteps - 1)

    def noisy_latents(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The model's input: latents noised to their timesteps."""
        return self.schedule.add_noise(latents, noise, timesteps)

    def loss_mask(self, latents: torch.Tensor) -> torch.Tensor | None:
        """Weight of each latent frame in the loss ([B, F]: 1 counts, 0 does not), or None for all."""
        return None

    def model_kwargs(self, batch: dict[str, Any], generator_per_sample: list[torch.Generator]) -> dict[str, Any]:
        """Extra transformer inputs of a stage (e.g. controls)."""
        return {}

    def after_optimizer_step(self) -> None:
        """Called once per applied optimizer step (not for a skipped one), before that step's checkpoint."""

    def validation_requests(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(name, sampling arguments) per validation prompt, for ``validation_videos``: its embeddings, the empty
        prompt's as the negative, a seeded generator, steps and guidance."""
        for index, prompt_embeds in enumerate(self.validation_embeds):
            yield (
                f"prompt-{index}",
                dict(
                    prompt_embeds=prompt_embeds[None],
                    negative_prompt_embeds=self.empty_prompt_embeds,
                    generator=torch.Generator(device=self.accelerator.device).manual_seed(self.args.seed + index),
                    num_inference_steps=self.args.validation_num_inference_steps,
                    guidance_scale=self.args.validation_guidance_scale,
                ),
            )

    def validation_videos(self) -> Iterator[tuple[str, torch.Tensor, list[str] | None]]:
        """(name, video [F, C, H, W] in [-1, 1], control label per frame or None), with the current weights: here a
        clip per validation prompt, as the stage's pipeline generates it."""
        pipeline = self.make_pipeline()
        for name, sampling in self.validation_requests():
            video = pipeline(
                height=self.args.height,
                width=self.args.width,
                num_frames=self.args.validation_num_frames,
                output_type="pt",
                **sampling,
            ).frames[0]
            yield name, pipeline_video_to_signed(video), None

    def save_final(self, transformer: torch.nn.Module) -> None:
        """Write what the next stage or inference reads: by default the full model, at ``<output_dir>/model``.

        Only the transformer is written, in the run's compute dtype (trained weights were float32); the
        other components are the input model directory's, unchanged.
        """
        for param in transformer.parameters():
            param.data = param.data.to(self.weight_dtype)
        save_model_dir(transformer, self.model_dir, self.final_model_dir, self.args.generation_defaults())

    @property
    def final_model_dir(self) -> Path:
        return self.output_dir / FINAL_MODEL

    @property
    def final_output(self) -> Path:
        """What ``save_final`` wrote, printed at the end of a run."""
        return self.final_model_dir

    @classmethod
    def main(cls, default_config: str | Path, argv: list[str] | None = None) -> Path:
        """A stage's entry point: read the config file and overrides, train, print where the result is."""
        args = parse_command_line(default_config, cls.args_class, argv)
        trainer = cls(args)
        trainer.train()
        print(f"trained model: {trainer.final_output.resolve()}")
        return trainer.final_output

    # ---------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Check everything that can be checked, then load and prepare the run.

        In this order, so that a mistake is reported before any weight loads: the model directory (a hub id
        resolves to its cached snapshot, ``self.model_dir``), then ``check_settings`` (the index and its
        problems, the settings taken from the model or the footage, the validation settings), the batches the
        clips make, and the checkpoint the run resumes (its settings and training mode: ``resume_point``); then
        the components, the transformer (``build_transformer``), the optimizer and the clips' cache.
        """
        args = self.args
        mixed_precision = args.mixed_precision
        if mixed_precision == "auto":
            mixed_precision = "bf16" if torch.cuda.is_available() else "no"
        self.accelerator = Accelerator(
            # Accumulation windows never end early at an epoch's end, so they line up with resumed runs.
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False
            ),
            mixed_precision=mixed_precision,
            log_with=tracker_names(args.report_to) or None,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
            ),
            # The loop steps the LR schedule once per optimizer step (accelerate would step it once per process),
            # so a run resumed on another number of processes continues its schedule where it was.
            step_scheduler_with_optimizer=False,
        )
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
        logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
        configure_training_mode(self.accelerator, args)
        if args.fp8_training:
            check_fp8("args.fp8_training", self.accelerator.device)
        self.model_dir = check_model_dir(args.pretrained_model_name_or_path)
        self.model_record = GenerationDefaults.load(self.model_dir)  # how the input model was trained, if recorded
        self.vae_layout = vae_architecture(self.model_dir)  # the VAE's factors, without its weights
        self.scheduler = self.scheduler_class.from_pretrained(self.model_dir, subfolder=SCHEDULER)  # config only
        self.check_settings()
        # The batches need the clips' buckets alone: checked here, built below on the clips as encoded.
        training_batches(self.clips, args, self.accelerator.num_processes)
        self.samples_per_micro_batch = args.train_batch_size * self.accelerator.num_processes  # all processes
        self.samples_per_step = self.samples_per_micro_batch * args.gradient_accumulation_steps
        self.checkpoints = Checkpoints(self.accelerator, self.output_dir / CHECKPOINT_DIR, args)
        self.resume_from = self.checkpoints.resume_point(self.samples_per_step)

        set_seed(args.seed)
        if args.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        self.weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)
        device = self.accelerator.device
        components = load_components(self.model_dir, self.weight_dtype)
        self.tokenizer, self.text_encoder, self.vae = (
            components["tokenizer"],
            components["text_encoder"],
            components["vae"],
        )
        self.schedule = CogVideoXTrainingSchedule(self.scheduler)
        for frozen in (self.text_encoder, self.vae):
            frozen.requires_grad_(False)
            frozen.eval()
            frozen.to(device)
        if args.enable_slicing:
            self.vae.enable_slicing()
        if args.enable_tiling:
            self.vae.enable_tiling()

        transformer = self.build_transformer()
        trainable = [param for param in transformer.parameters() if param.requires_grad]
        if not trainable:
            raise ConfigError("the stage marked no transformer parameter as trainable")
        check_model_for_mode(self.accelerator, transformer)
        # Frozen weights run in the compute dtype; trained weights stay float32 for exact small updates.
        for param in transformer.parameters():
            param.data = param.data.to(torch.float32 if param.requires_grad else self.weight_dtype)
        transformer.to(device)
        if args.gradient_checkpointing:
            offload = CheckpointOffload() if args.offload_checkpoints else None
            enable_checkpointing(transformer, args.checkpoint_keeps_attention, offload)
        if args.fp8_training:
            convert_fp8_training(transformer)
        if args.compile_blocks:
            compile_blocks(transformer)
        self.num_trainable_parameters = sum(param.numel() for param in trainable)

        # The empty caption (caption dropout, guidance's negative prompt) and the validation prompts, encoded once.
        self.empty_prompt_embeds = self.encode_prompts([EMPTY_CAPTION])  # [1, T, D]
        self.validation_embeds = self.encode_prompts(list(args.validation_prompts))
        self.dataset = self._cached(self.clips)
        if args.cache_latents:
            # Every clip and caption is encoded now: the encoders' memory goes back to the CPU, the VAE's until a
            # validation decodes (0.4 GiB at CogVideoX-2B's size, the training step's to use).
            self.text_encoder.to("cpu")
            self.vae.to("cpu")
        self.batch_sampler, dataloader = training_batches(self.dataset, args, self.accelerator.num_processes)

        optimizer = adamw(trainable, args)
        lr_scheduler = get_scheduler(
            args.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=args.lr_warmup_steps,
            num_training_steps=args.max_train_steps,
        )
        self.transformer, self.optimizer, self.dataloader, self.lr_scheduler = self.accelerator.prepare(
            transformer, optimizer, dataloader, lr_scheduler
        )
        self.rotary_cache: dict[int, Any] = {}
        self.after_setup()

    def check_settings(self) -> None:
        """Complete and check the settings against the model directory and the footage, before any weight loads.

        Unset settings take what the input model records (``self.model_record``, see ``GenerationDefaults``),
        else the footage's: ``fps`` its slowest clip's rate, or the model's native ``height`` and ``width``; the
        validation prompts and guidance are those the trained model will be sampled with
        (``resolve_validation_sampling``). A setting that contradicts the model is an error. Reads the index (each
        unusable entry logged, none usable an error) into ``self.clips``, whose controls are checked against
        ``self.vocabulary`` (None: a model without controls). A stage extends this with its own settings.
        """
        args = self.args
        transformer = transformer_config(self.model_dir)
        samples = load_samples(args, self.vocabulary)
        args.fps = self.setting_from_model("fps", "fps") or footage_fps(samples)
        native = generation_defaults(self.model_dir)
        args.height = self.setting_from_model("height", "height") or native.height
        args.width = self.setting_from_model("width", "width") or native.width
        model_prompt = self.model_record.prompt if self.model_record else None
        resolve_validation_sampling(args, model_prompt, samples[0].caption)
        if args.validation_steps and args.validation_prompts and not can_write_mp4():
            raise ConfigError(
                f"args.validation_steps = {args.validation_steps} writes validation videos as mp4, and no ffmpeg is "
                "found here (imageio-ffmpeg installed without its binary, IMAGEIO_FFMPEG_EXE unset): reinstall "
                "imageio-ffmpeg with its binary, set IMAGEIO_FFMPEG_EXE to an ffmpeg executable, or set "
                "args.validation_steps = 0"
            )

        temporal = self.vae_layout.config.temporal_compression_ratio
        spatial = 2 ** (len(self.vae_layout.config.block_out_channels) - 1) * transformer["patch_size"]
        for frames in (*args.frame_buckets, args.validation_num_frames):
            if (frames - 1) % temporal:
                raise ConfigError(
                    f"{frames} frames: clips must have {temporal}k+1 frames for this VAE (args.frame_buckets, args.validation_num_frames)"
                )
        if args.height % spatial or args.width % spatial:
            raise ConfigError(
                f"args.height and args.width must be multiples of {spatial} for this model; got {args.height}x{args.width}"
            )
        text_width = T5Config.from_pretrained(self.model_dir, subfolder=TEXT_ENCODER).d_model
        if text_width != transformer["text_embed_dim"]:
            raise ConfigError(
                f"the model at {self.model_dir}: text encoder width {text_width} != transformer text_embed_dim "
                f"{transformer['text_embed_dim']}"
            )
        # Positional embeddings (CogVideoX-2B's) span exactly max_text_seq_length text tokens; rotary ones take any.
        positional = not transformer.get("use_rotary_positional_embeddings", False) or transformer.get(
            "use_learned_positional_embeddings", False
        )
        if positional and args.max_text_seq_length != transformer["max_text_seq_length"]:
            raise ConfigError(
                f"args.max_text_seq_length = {args.max_text_seq_length}, but the transformer at {self.model_dir} "
                f"places its positional embeddings after exactly {transformer['max_text_seq_length']} text tokens: "
                f"set args.max_text_seq_length = {transformer['max_text_seq_length']}"
            )
        self.clips = clip_dataset(samples, args, self.vocabulary, temporal)

    def setting_from_model(self, setting: str, recorded: str) -> Any:
        """``args.<setting>`` against the input model's record of it (``GenerationDefaults.<recorded>``): unset, the
        model's value (None if it records none); set, the same value, or an error naming both."""
        return setting_from_model(
            f"args.{setting}",
            getattr(self.args, setting),
            getattr(self.model_record, recorded, None),
            f"the model at {self.model_dir}",
        )

    def _cached(self, clips: torch.utils.data.Dataset) -> torch.utils.data.Dataset:
        """``clips``, or with ``args.cache_latents`` their latents and caption embeddings, encoded once."""
        args = self.args
        if not args.cache_latents:
            return clips
        return cached_clips(
            clips,
            Path(args.cache_dir or self.output_dir / "cache"),
            self.encode_videos,
            self.encode_prompts,
            self.cache_fingerprint(),
            lambda num_frames: cache_entry_bytes(num_frames, args, self.vae, self.text_encoder),
            self.accelerator,
            args.dataloader_num_workers,
        )

    def cache_fingerprint(self) -> dict[str, Any]:
        """What shapes cached latents and prompt embeddings besides the clip; a stage that encodes otherwise adds to it."""
        return encoder_fingerprint(self.model_dir, self.args, self.vae, self.text_encoder, self.weight_dtype)

    # ---------------------------------------------------------------- encoders
    def make_pipeline(self) -> CogVideoXPipeline:
        """The stage's inference pipeline around the components in memory."""
        # With cached captions the text encoder sits on the CPU and must not set the pipeline's device.
        text_encoder = None if self.args.cache_latents else self.text_encoder
        return self.pipeline_class(
            tokenizer=self.tokenizer,
            text_encoder=text_encoder,
            vae=self.vae,
            transformer=self.accelerator.unwrap_model(self.transformer),
            scheduler=self.scheduler_class.from_config(self.scheduler.config),
        )

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> torch.Tensor:
        """T5 embeddings [B, T, D], exactly as the inference pipeline computes them."""
        pipeline = CogVideoXPipeline(self.tokenizer, self.text_encoder, vae=None, transformer=None, scheduler=None)
        embeds, _ = pipeline.encode_prompt(
            captions,
            do_classifier_free_guidance=False,
            max_sequence_length=self.args.max_text_seq_length,
            device=self.accelerator.device,
            dtype=self.weight_dtype,
        )
        return embeds

    @torch.no_grad()
    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        """Latent distribution parameters [B, 2C, F', h, w] of videos [B, F, C, H, W] in [-1, 1]."""
        videos = videos.to(self.accelerator.device, self.weight_dtype).permute(0, 2, 1, 3, 4)
        return self.vae.encode(videos).latent_dist.parameters

    def sample_latents(self, parameters: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """Draw scaled latents [B, F', C, h, w] from the VAE's distribution, one generator per sample."""
        mean, logvar = parameters.float().chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        noise = torch.stack(
            [
                torch.randn(mean.shape[1:], generator=generator, device=generator.device, dtype=mean.dtype)
                for generator in generators
            ]
        )
        latents = (mean + std * noise) * self.vae.config.scaling_factor
        return latents.permute(0, 2, 1, 3, 4)

    def rotary_embeddings(self, num_latent_frames: int):
        transformer = self.accelerator.unwrap_model(self.transformer)
        if not transformer.config.use_rotary_positional_embeddings:
            return None
        if num_latent_frames not in self.rotary_cache:
            pipeline = CogVideoXPipeline(None, None, self.vae, transformer, None)
            self.rotary_cache[num_latent_frames] = pipeline._prepare_rotary_positional_embeddings(
                self.args.height, self.args.width, num_latent_frames, self.accelerator.device
            )
        return self.rotary_cache[num_latent_frames]

    # ---------------------------------------------------------------- loss
    def prepare_batch(
        self, batch: dict[str, Any], first_sample_position: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Generator]]:
        """Clean latents [B, F, C, h, w], noise like them, prompt embeddings (the empty caption's for a sample
        whose caption is dropped) and each sample's generator.

        Every random draw of the n-th sample of the run comes from its own generator, so a batch of two
        equals two accumulated batches of one, and a resumed run draws what the uninterrupted one did.
        """
        device = self.accelerator.device
        generators = [
            sample_generator(self.args.seed, first_sample_position + index, device)
            for index in range(len(batch["caption"]))
        ]
        if "latent_parameters" in batch:
            parameters, prompt_embeds = batch["latent_parameters"], batch["prompt_embeds"].to(device)
        else:
            parameters, prompt_embeds = self.encode_videos(batch["video"]), self.encode_prompts(batch["caption"])
        latents = self.sample_latents(parameters.to(device), generators)
        noise = torch.stack(
            [
                torch.randn(latents.shape[1:], generator=generator, device=device, dtype=latents.dtype)
                for generator in generators
            ]
        )
        # Caption dropout: the empty caption trains the unconditional prediction that guidance subtracts.
        dropped = draw_dropout(generators, self.args.caption_p_zero)
        prompt_embeds = torch.where(
            dropped[:, None, None], self.empty_prompt_embeds, prompt_embeds.to(self.weight_dtype)
        )
        return latents, noise, prompt_embeds, generators

    def compute_loss(self, batch: dict[str, Any], first_sample_position: int) -> torch.Tensor:
        """CogVideoX's v-prediction loss on x0, weighted by 1 / (1 - alpha_bar_t)."""
        latents, noise, prompt_embeds, generators = self.prepare_batch(batch, first_sample_position)
        num_latent_frames = latents.shape[1]
        timesteps = torch.cat([self.sample_timesteps(num_latent_frames, generator) for generator in generators])
        noisy = self.noisy_latents(latents, noise, timesteps)
        prediction = self.transformer(
            hidden_states=noisy.to(self.weight_dtype),
            encoder_hidden_states=prompt_embeds,
            timestep=timesteps,
            image_rotary_emb=self.rotary_embeddings(num_latent_frames),
            return_dict=False,
            **self.model_kwargs(batch, generators),
        )[0].float()
        predicted_latents = self.schedule.velocity_to_sample(prediction, noisy, timesteps)
        error = self.schedule.loss_weight(timesteps, latents.ndim) * (predicted_latents - latents) ** 2
        mask = self.loss_mask(latents)
        if mask is None:
            per_sample = error.flatten(1).mean(dim=1)
        else:
            frame_error = error.flatten(2).mean(dim=2)
            per_sample = (frame_error * mask).sum(dim=1) / mask.sum(dim=1)
        return per_sample.mean()

    # ---------------------------------------------------------------- checkpoints
    def _trainer_state(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "skipped_steps": self.skipped_steps,
            SAMPLES_PER_STEP: self.samples_per_step,
            DATA_POSITION: asdict(self.data_position),
        }

    def save_checkpoint(self) -> Path:
        """Write checkpoint-<global_step>, unless a trainable weight is not finite."""
        self._check_weights_finite("checkpoint")
        path = self.checkpoints.save(self.global_step, self._trainer_state())
        self.metrics.plot()
        return path

    def _check_weights_finite(self, what: str) -> None:
        bad = nonfinite_parameters(self.accelerator.unwrap_model(self.transformer))
        (any_bad,) = any_process(self.accelerator, bool(bad))
        if any_bad:
            raise RunFailed(
                f"step {self.global_step}: trainable weights are not finite ({', '.join(bad[:3]) or 'on another process'}"
                f"{', ...' if len(bad) > 3 else ''}), so the {what} was not written; {self._last_good_checkpoint()}; "
                f"{stability_advice(self.args)}"
            )

    def _last_good_checkpoint(self) -> str:
        latest = self.checkpoints.latest()
        if latest is None:
            return "no checkpoint was saved yet"
        return f"the last good checkpoint is {latest} (rerunning resumes from it)"

    # ---------------------------------------------------------------- loop
    def train(self) -> Path:
        """Run (or resume) training; returns the output directory.

        Raises ``RunPreempted`` after saving a checkpoint when SIGTERM or SIGINT arrives, and ``RunFailed``
        when a check stops the run (non-finite values, a failing validation); see README, "When a run goes wrong".
        """
        with self.stop_signals:
            if not hasattr(self, "accelerator"):
                self.setup()
            self._begin()
            try:
                self._run_steps()
                self._check_weights_finite("final model")
                self.accelerator.wait_for_everyone()
                transformer = unsharded_model(self.accelerator, self.transformer)  # None but on the main process
                if transformer is not None:
                    self.save_final(transformer)
            finally:
                self.metrics.plot()
                self.accelerator.end_training()
        return self.output_dir

    def _begin(self) -> None:
        """Resume (or start) after checking the output directory and its disk; from here on signals wait for a step boundary."""
        args, accelerator = self.args, self.accelerator
        if self.resume_from is not None:
            state = self.checkpoints.load(self.resume_from, self.lr_scheduler)
            self.global_step, self.skipped_steps = state["global_step"], state.get("skipped_steps", 0)
            self.data_position = DataPosition.from_trainer_state(
                state, self.samples_per_step, len(self.dataloader) * self.samples_per_micro_batch
            )
        problem = main_process_decides(
            accelerator,
            lambda: disk_space_problem(
                self.output_dir,
                [self.checkpoints.disk_needs(self.global_step, self.num_trainable_parameters)],
                "free space there, point args.output_dir at a larger disk, or lower args.checkpoints_total_limit",
            ),
        )
        if problem:
            raise ConfigError(problem)
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            args.save(self.output_dir / RESOLVED_CONFIG)
        accelerator.wait_for_everyone()
        if accelerator.log_with:
            accelerator.init_trackers("train", config={key: str(value) for key, value in args.to_dict().items()})
        self.metrics = RunMetrics(accelerator, self.output_dir, args.logging_steps, self.global_step)
        logger.info(
            "%d clips, %d batches per epoch, %d samples per optimizer step, %s trainable parameters",
            len(self.dataset),
            len(self.dataloader),
            self.samples_per_step,
            f"{self.num_trainable_parameters:,}",
        )
        self.stop_signals.training = True

    def _micro_batches(self) -> Iterator[tuple[dict[str, Any], int]]:
        """This process's (batch, position of its first sample in the run) from ``self.data_position`` on, epoch after
        epoch: each micro-batch of all processes together, process p drawing its p-th batch of clips."""
        args, accelerator = self.args, self.accelerator
        per_micro_batch, position = self.samples_per_micro_batch, self.data_position
        while True:
            passed = position.align(per_micro_batch, len(self.dataloader))
            if passed:
                logger.warning(
                    "epoch %d: %d samples passed over, to start at a whole micro-batch of %d samples (the "
                    "checkpoint's micro-batches were of another size)",
                    position.epoch,
                    passed,
                    per_micro_batch,
                )
            skip = position.epoch_samples // per_micro_batch
            loader = accelerator.skip_first_batches(self.dataloader, skip) if skip else self.dataloader
            # accelerate's loaders re-set their sampler's epoch from their own counter when iterated.
            loader.set_epoch(position.epoch)
            self.batch_sampler.set_epoch(position.epoch)
            for batch in loader:
                first_sample = position.samples_drawn + accelerator.process_index * args.train_batch_size
                position.advance(per_micro_batch)
                yield batch, first_sample

    def _run_steps(self) -> None:
        args, accelerator = self.args, self.accelerator
        batches = self._micro_batches()
        self.transformer.train()
        # Closed on the way out of a stop too, so the run's last line is its own.
        with tqdm(
            total=args.max_train_steps,
            initial=self.global_step,
            desc="steps",
            disable=not accelerator.is_local_main_process,
        ) as progress:
            # The main process traces args.profile_steps steps after this launch's first PROFILE_WARMUP_STEPS.
            trace = None
            if args.profile_steps and accelerator.is_main_process:
                start = self.global_step + PROFILE_WARMUP_STEPS
                trace = profiling.StepTrace(accelerator.device, self.output_dir, start, start + args.profile_steps)
            while self.global_step < args.max_train_steps:
                step_start = time.perf_counter()
                if trace is not None:
                    trace.before_step(self.global_step)
                logs = {"lr": float(self.lr_scheduler.get_last_lr()[0])}
                logs.update(self._optimizer_step(batches))
                self.global_step += 1
                if trace is not None:
                    trace.after_step(self.global_step, args.max_train_steps)
                self.lr_scheduler.step()
                logs["step_time_s"] = time.perf_counter() - step_start
                if torch.cuda.is_available():
                    logs["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                self.history.append(logs)
                self.metrics.log(logs, self.global_step)
                progress.update(1)
                progress.set_postfix(loss=f"{logs['loss']:.4f}")

                if self.global_step % args.checkpointing_steps == 0 or self.global_step == args.max_train_steps:
                    self.save_checkpoint()
                if args.validation_steps and self.global_step % args.validation_steps == 0:
                    self._validate_or_stop()
                self._stop_if_signalled()

    def _stop_if_signalled(self) -> None:
        """At a step boundary: after SIGTERM or SIGINT to any process, save a checkpoint and stop."""
        (stop,) = any_process(self.accelerator, self.stop_signals.requested)
        if not stop:
            return
        if not self.checkpoints.has(self.global_step):
            self.save_checkpoint()
        # Other processes may end first and their launcher signal this one again: nothing is left to save.
        self.stop_signals.restore()
        raise RunPreempted(
            f"{self.stop_signals.received or 'a signal to another process'} at step {self.global_step}: "
            f"saved {self.checkpoints.latest()}; rerun the same command to resume"
        )

    def _optimizer_step(self, batches: Iterator[tuple[dict[str, Any], int]]) -> dict[str, float]:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches; returns its loss and gradient norm.

        A non-finite loss (checked before backward) or gradient norm, on any process, skips the update
        (zeroed gradients, no optimizer step) while ``args.max_nonfinite_steps`` allows, else stops the run.
        """
        args, accelerator = self.args, self.accelerator
        losses, loss_nonfinite = [], False
        for _ in range(args.gradient_accumulation_steps):
            batch, position = next(batches)
            with accelerator.accumulate(self.transformer):
                loss = self.compute_loss(batch, position)
                losses.append(loss.item())
                (nonfinite_now,) = any_process(accelerator, not math.isfinite(losses[-1]))
                loss_nonfinite |= nonfinite_now
                if not loss_nonfinite:  # every process skips the same backward passes
                    accelerator.backward(loss)
        logs = {"loss": sum(losses) / len(losses)}
        # The last micro-batch synchronised the gradients (accumulate() counts them in windows of this size).
        if not loss_nonfinite:
            grad_norm = accelerator.clip_grad_norm_(self.transformer.parameters(), args.max_grad_norm)
            if grad_norm is not None:  # DeepSpeed clips inside its own step
                logs["grad_norm"] = float(grad_norm)
        # With fp16 an overflowing gradient is the loss scaler's to handle: it skips the step and lowers the scale.
        grad_nonfinite = accelerator.scaler is None and not math.isfinite(logs.get("grad_norm", 0.0))
        (grad_nonfinite,) = any_process(accelerator, grad_nonfinite)
        if loss_nonfinite or grad_nonfinite:
            seen_here = not all(map(math.isfinite, (*losses, logs.get("grad_norm", 0.0))))
            self._skip_or_stop("loss" if loss_nonfinite else "gradient norm", logs, seen_here)
        else:
            self.optimizer.step()
            if not self.optimizer.step_was_skipped:  # fp16's loss scaler skips steps whose gradients overflowed
                self.after_optimizer_step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.skipped_steps:  # healthy runs log no such series
            logs["skipped_steps"] = self.skipped_steps
        return logs

    def _skip_or_stop(self, what: str, logs: dict[str, float], seen_here: bool) -> None:
        measured = ", ".join(f"{name} {logs[name]:.4g}" for name in ("loss", "grad_norm") if name in logs)
        where = f"({measured})" if seen_here else f"on another process (here {measured})"
        cause = f"step {self.global_step + 1}: non-finite {what} {where}"
        if self.skipped_steps >= self.args.max_nonfinite_steps:
            raise RunFailed(
                f"{cause}. The run stopped without applying this step and wrote nothing non-finite; "
                f"{self._last_good_checkpoint()}; {stability_advice(self.args)}"
            )
        self.skipped_steps += 1
        logger.warning(
            "%s: update skipped (%d of args.max_nonfinite_steps = %d)",
            cause,
            self.skipped_steps,
            self.args.max_nonfinite_steps,
        )

    # ---------------------------------------------------------------- validation
    def _validate_or_stop(self) -> None:
        """Validate; a failure on any process saves a checkpoint, then stops the run or (setting) is logged."""
        args, accelerator = self.args, self.accelerator
        failure = None
        try:
            self.validate()
        except Exception as error:  # out of memory at a validation size, a broken pipeline: the run is kept either way
            failure = error
            logger.exception("validation at step %d failed", self.global_step)
        (failed,) = any_process(accelerator, failure is not None)
        if not failed:
            return
        if not self.checkpoints.has(self.global_step):
            self.save_checkpoint()
        cause = f"{type(failure).__name__}: {failure}" if failure else "on another process"
        settings = {name: value for name, value in args.to_dict().items() if name.startswith("validation_")}
        message = (
            f"validation at step {self.global_step} failed ({cause}) at {args.height}x{args.width} with {settings}; "
            f"{self._last_good_checkpoint()}. Lower the validation sizes or steps, or set args.validation_steps = 0"
        )
        if args.stop_on_validation_failure:
            raise RunFailed(f"{message}, or args.stop_on_validation_failure = False to train on") from failure
        logger.warning("%s; training goes on (args.stop_on_validation_failure = False)", message)
        del failure  # its traceback holds the failed validation's tensors
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @torch.no_grad()
    def validation_loss(self) -> float:
        """The loss of the first ``args.validation_loss_clips`` clips at noise and timesteps no training step draws.

        The same draws at every validation make it a steadier curve than the training loss. Every process
        computes it (the forward of a distributed model is collective).
        """
        clips = range(min(self.args.validation_loss_clips, len(self.dataset)))
        losses = [
            self.compute_loss(collate_batch([self.dataset[index]]), VALIDATION_LOSS_POSITION + index).item()
            for index in clips
        ]
        return sum(losses) / len(losses)

    @torch.no_grad()
    def validate(self) -> list[Path]:
        """Measure the validation loss; generate the validation videos, write them as mp4 and log their frames.

        The main process generates them; under FSDP every process does (each forward gathers the weights from
        all of them) and the main one writes them.
        """
        self.transformer.eval()
        every_process_generates = training_mode(self.accelerator) is TrainingMode.FSDP
        self.vae.to(self.accelerator.device)
        try:
            if self.args.validation_loss_clips:
                self.metrics.log({"validation_loss": self.validation_loss()}, self.global_step, always=True)
            if not (self.accelerator.is_main_process or every_process_generates):
                return []
            written = []
            folder = self.output_dir / "validation" / f"step-{self.global_step}"
            for name, video, labels in self.validation_videos():
                if not self.accelerator.is_main_process:
                    continue
                frames = tensor_to_uint8_frames(video.cpu())
                if labels is not None:
                    frames = draw_control_overlay(frames, labels)
                path = folder / f"{name}.mp4"
                write_mp4(frames, path, fps=self.args.fps)
                written.append(path)
                self.metrics.log_frames(f"validation/{name}", frames, self.global_step)
                if self.stop_signals.requested and not every_process_generates:
                    break  # the checkpoint of a stopping run comes before more videos
            logger.info("validation videos: %s", ", ".join(map(str, written)))
            return written
        finally:
            self.transformer.train()
            if self.args.cache_latents:
                self.vae.to("cpu")
