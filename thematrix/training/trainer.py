"""The training loop every stage shares: data, mixed precision, accumulation, checkpoints, resume, logs.

A stage subclasses ``Trainer`` and overrides only what is its own: which transformer it loads and
which parameters train (``build_transformer``), how timesteps are drawn and which frames count
in the loss (``sample_timesteps``, ``loss_mask``), extra model inputs (``model_kwargs``), the
validation pipeline and what it saves at the end (``save_final``).

Exact resume: noise and timesteps for the n-th sample of the run come from a generator seeded by
(seed, n), the data order of epoch e is a function of (seed, e), and checkpoints hold the trainable
weights, optimizer, LR schedule and RNG states. A resumed run therefore takes the same steps as an
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed
from diffusers import CogVideoXPipeline
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from thematrix.config import ConfigError, parse_command_line
from thematrix.controls import DEFAULT_VOCABULARY, ControlVocabulary
from thematrix.data.dataset import BucketBatchSampler, VideoDataset, collate_batch
from thematrix.data.index import load_index
from thematrix.model_dir import check_model_dir, load_components, save_model_dir
from thematrix.schedules import CogVideoXTrainingSchedule
from thematrix.training.arguments import TrainingArgs
from thematrix.training.encoded_cache import EncodedDataset, encode_dataset
from thematrix.video import draw_control_overlay, tensor_to_uint8_frames, write_mp4

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
PARTIAL_SUFFIX = ".partial"
TRAINABLE_WEIGHTS = "trainable.safetensors"
TRAINER_STATE = "trainer_state.json"
RESOLVED_CONFIG = "config.json"
FINAL_MODEL = "model"
EMPTY_CAPTION = ""
# Spreads per-sample seeds so that (seed, n) pairs of nearby runs never collide.
SEED_STRIDE = 1_000_003


def sample_generator(seed: int, sample_position: int, device: torch.device) -> torch.Generator:
    """The generator of the ``sample_position``-th training sample of a run: resume- and batch-invariant."""
    return torch.Generator(device=device).manual_seed(seed * SEED_STRIDE + sample_position)


def draw_dropout(generators: list[torch.Generator], probability: float) -> torch.Tensor:
    """BoolTensor [B]: whether each sample drops a condition, one draw from each sample's own generator."""
    return torch.stack([torch.rand((), generator=generator, device=generator.device) < probability for generator in generators])


def list_checkpoints(checkpoint_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first; ``.partial`` directories of killed saves are ignored."""
    if not checkpoint_root.is_dir():
        return []
    found = [
        path for path in checkpoint_root.iterdir()
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and not path.name.endswith(PARTIAL_SUFFIX)
    ]
    return sorted(found, key=lambda path: int(path.name[len(CHECKPOINT_PREFIX):]))


class Trainer:
    """Trains a CogVideoX transformer on game clips; see the module docstring for the stage hooks."""

    args_class = TrainingArgs
    pipeline_class = CogVideoXPipeline
    # A scheduler with ``sample_training_timesteps`` (stage1.cogvideox.scheduler.GameScheduler and its subclasses).
    scheduler_class: type

    def __init__(self, args: TrainingArgs):
        args.check()
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.checkpoint_root = self.output_dir / "checkpoints"
        self.global_step = 0
        self.history: list[dict[str, float]] = []  # per optimizer step: loss, lr, step time, ...

    # ---------------------------------------------------------------- stage hooks
    def build_transformer(self) -> torch.nn.Module:
        """Load the transformer and mark which parameters train. Stages must override."""
        raise NotImplementedError

    def control_vocabulary(self) -> ControlVocabulary:
        """The vocabulary clips' controls are checked against; stages with controls override."""
        return DEFAULT_VOCABULARY

    def sample_timesteps(self, num_latent_frames: int, generator: torch.Generator) -> torch.Tensor:
        """One sample's training timesteps, [1] or [1, F]: the stage's scheduler decides."""
        return self.scheduler.sample_training_timesteps(num_latent_frames, generator)

    def noisy_latents(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The model's input: latents noised to their timesteps."""
        return self.schedule.add_noise(latents, noise, timesteps)

    def loss_mask(self, latents: torch.Tensor) -> Optional[torch.Tensor]:
        """Which latent frames count in the loss ([B, F] bool), or None for all."""
        return None

    def model_kwargs(self, batch: dict[str, Any], generator_per_sample: list[torch.Generator]) -> dict[str, Any]:
        """Extra transformer inputs of a stage (e.g. controls)."""
        return {}

    def validation_requests(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(name, sampling arguments) per validation prompt: its embeddings, a seeded generator, steps, guidance."""
        for index, prompt_embeds in enumerate(self.validation_embeds):
            yield f"prompt-{index}", dict(
                prompt_embeds=prompt_embeds[None],
                negative_prompt_embeds=self.empty_prompt_embeds,
                generator=torch.Generator(device=self.accelerator.device).manual_seed(self.args.seed + index),
                num_inference_steps=self.args.validation_num_inference_steps,
                guidance_scale=self.args.validation_guidance_scale,
            )

    def validation_videos(self) -> Iterator[tuple[str, torch.Tensor, Optional[list[str]]]]:
        """(name, video [F, C, H, W] in [-1, 1], control label per frame or None), with the current weights."""
        pipeline = self.make_pipeline()
        for name, sampling in self.validation_requests():
            video = pipeline(
                height=self.args.height, width=self.args.width, num_frames=self.args.validation_num_frames,
                output_type="pt", **sampling,
            ).frames[0]
            yield name, video * 2 - 1, None

    def save_final(self, transformer: torch.nn.Module) -> None:
        """Write what the next stage or inference reads: by default the full model, at ``<output_dir>/model``.

        Only the transformer is written, in the run's compute dtype (trained weights were float32); the
        other components are the input model directory's, unchanged.
        """
        for param in transformer.parameters():
            param.data = param.data.to(self.weight_dtype)
        save_model_dir(transformer, self.args.pretrained_model_name_or_path, self.final_model_dir)

    @property
    def final_model_dir(self) -> Path:
        return self.output_dir / FINAL_MODEL

    @property
    def final_output(self) -> Path:
        """What ``save_final`` wrote, printed at the end of a run."""
        return self.final_model_dir

    @classmethod
    def main(cls, default_config: str | Path, argv: Optional[list[str]] = None) -> Path:
        """A stage's entry point: read the config file and overrides, train, print where the result is."""
        args = parse_command_line(default_config, cls.args_class, argv)
        trainer = cls(args)
        trainer.train()
        print(f"trained model: {trainer.final_output.resolve()}")
        return trainer.final_output

    # ---------------------------------------------------------------- set-up
    def setup(self) -> None:
        args = self.args
        check_model_dir(args.pretrained_model_name_or_path)
        mixed_precision = args.mixed_precision
        if mixed_precision == "auto":
            mixed_precision = "bf16" if torch.cuda.is_available() else "no"
        self.accelerator = Accelerator(
            # Accumulation windows never end early at an epoch's end, so they line up with resumed runs.
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False
            ),
            mixed_precision=mixed_precision,
            log_with=None if args.report_to == "none" else args.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
        )
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
        logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
        set_seed(args.seed)
        if args.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        self.weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)
        device = self.accelerator.device
        model_path = args.pretrained_model_name_or_path

        components = load_components(model_path, self.weight_dtype, self.scheduler_class)
        self.scheduler, self.tokenizer = components["scheduler"], components["tokenizer"]
        self.text_encoder, self.vae = components["text_encoder"], components["vae"]
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
        self._check_shapes(transformer)
        trainable = [param for param in transformer.parameters() if param.requires_grad]
        if not trainable:
            raise ConfigError("the stage marked no transformer parameter as trainable")
        # Frozen weights run in the compute dtype; trained weights stay float32 for exact small updates.
        for param in transformer.parameters():
            param.data = param.data.to(torch.float32 if param.requires_grad else self.weight_dtype)
        transformer.to(device)
        if args.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        self.num_trainable_parameters = sum(param.numel() for param in trainable)

        # The empty caption (caption dropout, guidance's negative prompt) and the validation prompts, encoded once.
        self.empty_prompt_embeds = self.encode_prompts([EMPTY_CAPTION])  # [1, T, D]
        self.validation_embeds = self.encode_prompts(list(args.validation_prompts))
        self.dataset = self._build_dataset()
        if args.cache_latents:
            # Every caption is encoded now: the text encoder's memory goes back to the CPU.
            self.text_encoder.to("cpu")
        batch_sampler = BucketBatchSampler(self.dataset, batch_size=args.train_batch_size, seed=args.seed, shuffle=args.shuffle, drop_last=True)
        if len(batch_sampler) == 0:
            raise ConfigError(
                f"{args.index_file}: no bucket has {args.train_batch_size} clips for one batch; "
                "lower args.train_batch_size or add clips"
            )
        self.batch_sampler = batch_sampler
        dataloader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batch_sampler, collate_fn=collate_batch, num_workers=args.dataloader_num_workers
        )

        optimizer = torch.optim.AdamW(
            trainable, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
            weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
        )
        num_processes = self.accelerator.num_processes
        lr_scheduler = get_scheduler(
            args.lr_scheduler, optimizer=optimizer,
            num_warmup_steps=args.lr_warmup_steps * num_processes,
            num_training_steps=args.max_train_steps * num_processes,
        )
        self.transformer, self.optimizer, self.dataloader, self.lr_scheduler = self.accelerator.prepare(
            transformer, optimizer, dataloader, lr_scheduler
        )
        self.accelerator.register_save_state_pre_hook(self._save_trainable_hook)
        self.accelerator.register_load_state_pre_hook(self._load_trainable_hook)
        self.rotary_cache: dict[int, Any] = {}

    def _check_shapes(self, transformer: torch.nn.Module) -> None:
        """Catch settings the model cannot take now, not hours into a run."""
        args = self.args
        temporal = self.vae.config.temporal_compression_ratio
        spatial = 2 ** (len(self.vae.config.block_out_channels) - 1) * transformer.config.patch_size
        for frames in (*args.frame_buckets, args.validation_num_frames):
            if (frames - 1) % temporal:
                raise ConfigError(f"{frames} frames: clips must have {temporal}k+1 frames for this VAE (args.frame_buckets, args.validation_num_frames)")
        if args.height % spatial or args.width % spatial:
            raise ConfigError(f"args.height and args.width must be multiples of {spatial} for this model; got {args.height}x{args.width}")
        if self.text_encoder.config.d_model != transformer.config.text_embed_dim:
            raise ConfigError(
                f"{args.pretrained_model_name_or_path}: text encoder width {self.text_encoder.config.d_model} "
                f"!= transformer text_embed_dim {transformer.config.text_embed_dim}"
            )

    def _build_dataset(self) -> torch.utils.data.Dataset:
        args = self.args
        samples, problems = load_index(args.index_file, args.data_root, self.control_vocabulary())
        for problem in problems:
            logger.warning("skipping sample: %s", problem)
        if not samples:
            raise ConfigError(f"{args.index_file}: no usable sample ({len(problems)} problems listed above)")
        dataset = VideoDataset(
            samples, fps=args.fps, height=args.height, width=args.width, frame_buckets=args.frame_buckets,
            temporal_compression=self.vae.config.temporal_compression_ratio, vocabulary=self.control_vocabulary(),
        )
        if not args.cache_latents:
            return dataset
        cache_dir = Path(args.cache_dir or self.output_dir / "cache")
        with self.accelerator.main_process_first():
            encode_dataset(dataset, cache_dir, self.encode_videos, self.encode_prompts, self._encoder_fingerprint())
        return EncodedDataset(dataset, cache_dir, self._encoder_fingerprint())

    def _encoder_fingerprint(self) -> dict[str, Any]:
        """What shapes cached latents and prompt embeddings besides the clip itself."""
        args = self.args
        return {
            "model": str(Path(args.pretrained_model_name_or_path).resolve()),
            "vae": self.vae.config,
            "text_encoder": self.text_encoder.config.to_dict(),
            "max_text_seq_length": args.max_text_seq_length,
            "height": args.height,
            "width": args.width,
            "fps": args.fps,
            "frame_buckets": list(args.frame_buckets),
            "dtype": str(self.weight_dtype),
        }

    # ---------------------------------------------------------------- encoders
    def make_pipeline(self) -> CogVideoXPipeline:
        """The stage's inference pipeline around the components in memory."""
        # With cached captions the text encoder sits on the CPU and must not set the pipeline's device.
        text_encoder = None if self.args.cache_latents else self.text_encoder
        return self.pipeline_class(
            tokenizer=self.tokenizer, text_encoder=text_encoder, vae=self.vae,
            transformer=self.accelerator.unwrap_model(self.transformer),
            scheduler=self.scheduler_class.from_config(self.scheduler.config),
        )

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> torch.Tensor:
        """T5 embeddings [B, T, D], exactly as the inference pipeline computes them."""
        pipeline = CogVideoXPipeline(self.tokenizer, self.text_encoder, vae=None, transformer=None, scheduler=None)
        embeds, _ = pipeline.encode_prompt(
            captions, do_classifier_free_guidance=False, max_sequence_length=self.args.max_text_seq_length,
            device=self.accelerator.device, dtype=self.weight_dtype,
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
        noise = torch.stack([
            torch.randn(mean.shape[1:], generator=generator, device=generator.device, dtype=mean.dtype)
            for generator in generators
        ])
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
            sample_generator(self.args.seed, first_sample_position + index, device) for index in range(len(batch["caption"]))
        ]
        if "latent_parameters" in batch:
            parameters, prompt_embeds = batch["latent_parameters"], batch["prompt_embeds"].to(device)
        else:
            parameters, prompt_embeds = self.encode_videos(batch["video"]), self.encode_prompts(batch["caption"])
        latents = self.sample_latents(parameters.to(device), generators)
        noise = torch.stack([
            torch.randn(latents.shape[1:], generator=generator, device=device, dtype=latents.dtype) for generator in generators
        ])
        # Caption dropout: the empty caption trains the unconditional prediction that guidance subtracts.
        dropped = draw_dropout(generators, self.args.caption_p_zero)
        prompt_embeds = torch.where(dropped[:, None, None], self.empty_prompt_embeds, prompt_embeds.to(self.weight_dtype))
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
    def _trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {name: param.detach().contiguous() for name, param in model.named_parameters() if param.requires_grad}

    def _save_trainable_hook(self, models, weights, output_dir) -> None:
        if self.accelerator.is_main_process:
            for model in models:
                save_file(self._trainable_state(self.accelerator.unwrap_model(model)), os.path.join(output_dir, TRAINABLE_WEIGHTS))
        weights.clear()

    def _load_trainable_hook(self, models, input_dir) -> None:
        model = self.accelerator.unwrap_model(models.pop())
        state = load_file(os.path.join(input_dir, TRAINABLE_WEIGHTS))
        expected = set(self._trainable_state(model))
        if set(state) != expected:
            raise ConfigError(
                f"{input_dir}: checkpoint weights do not match the trainable parameters of this run "
                f"(missing {sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}); "
                "it was written by a run with other settings. Set args.resume_from_checkpoint = None to start fresh."
            )
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                parameters[name].copy_(value)

    def save_checkpoint(self) -> Path:
        """Write checkpoint-<step> atomically: into a .partial directory, renamed when complete."""
        final = self.checkpoint_root / f"{CHECKPOINT_PREFIX}{self.global_step}"
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        if self.accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(partial))
        if self.accelerator.is_main_process:
            (partial / TRAINER_STATE).write_text(json.dumps({"global_step": self.global_step}))
            self.args.save(partial / RESOLVED_CONFIG)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            limit = self.args.checkpoints_total_limit
            if limit is not None:
                for old in list_checkpoints(self.checkpoint_root)[:-limit]:
                    shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return final

    def _resume(self) -> None:
        choice = self.args.resume_from_checkpoint
        if choice is None:
            return
        if choice == "latest":
            found = list_checkpoints(self.checkpoint_root)
            if not found:
                return
            path = found[-1]
        else:
            path = Path(choice)
            if not (path / TRAINER_STATE).is_file():
                raise ConfigError(f"args.resume_from_checkpoint = {choice!r} is not a complete checkpoint directory")
        self.accelerator.load_state(str(path))
        self.global_step = json.loads((path / TRAINER_STATE).read_text())["global_step"]
        saved_args = json.loads((path / RESOLVED_CONFIG).read_text())
        changed = {key: value for key, value in self.args.to_dict().items() if json.loads(json.dumps(value, default=str)) != saved_args.get(key)}
        logger.info("resumed from %s at step %d", path, self.global_step)
        if changed:
            logger.warning("settings changed since that checkpoint: %s", sorted(changed))

    # ---------------------------------------------------------------- loop
    def train(self) -> Path:
        """Run (or resume) training; returns the output directory."""
        if not hasattr(self, "accelerator"):
            self.setup()
        args, accelerator = self.args, self.accelerator
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            args.save(self.output_dir / RESOLVED_CONFIG)
        if args.report_to != "none":
            accelerator.init_trackers("train", config={k: str(v) for k, v in args.to_dict().items()})
        self._resume()

        batches_per_epoch = len(self.dataloader)
        samples_per_step = args.train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
        logger.info(
            "%d clips, %d batches per epoch, %d samples per optimizer step, %s trainable parameters",
            len(self.dataset), batches_per_epoch, samples_per_step, f"{self.num_trainable_parameters:,}",
        )
        progress = tqdm(
            total=args.max_train_steps, initial=self.global_step, desc="steps", disable=not accelerator.is_local_main_process
        )
        micro_step = self.global_step * args.gradient_accumulation_steps
        self.transformer.train()
        while self.global_step < args.max_train_steps:
            epoch, skip = divmod(micro_step, batches_per_epoch)
            loader = accelerator.skip_first_batches(self.dataloader, skip) if skip else self.dataloader
            # accelerate's loaders re-set their sampler's epoch from their own counter when iterated.
            loader.set_epoch(epoch)
            self.batch_sampler.set_epoch(epoch)
            step_start, step_loss = time.perf_counter(), 0.0
            for batch in loader:
                # Position of this process's first sample in the run's stream of samples.
                position = (micro_step * accelerator.num_processes + accelerator.process_index) * args.train_batch_size
                with accelerator.accumulate(self.transformer):
                    loss = self.compute_loss(batch, position)
                    accelerator.backward(loss)
                    step_loss += loss.detach().item() / args.gradient_accumulation_steps
                    grad_norm = None
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(self.transformer.parameters(), args.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                micro_step += 1
                if not accelerator.sync_gradients:
                    continue
                self.global_step += 1
                progress.update(1)
                logs = {"loss": step_loss, "lr": self.lr_scheduler.get_last_lr()[0], "step_time_s": time.perf_counter() - step_start}
                if grad_norm is not None:
                    logs["grad_norm"] = float(grad_norm)
                if torch.cuda.is_available():
                    logs["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                self.history.append(logs)
                step_start, step_loss = time.perf_counter(), 0.0
                progress.set_postfix(loss=f"{logs['loss']:.4f}")
                if args.report_to != "none" and self.global_step % args.logging_steps == 0:
                    accelerator.log(logs, step=self.global_step)
                if self.global_step % args.checkpointing_steps == 0 or self.global_step == args.max_train_steps:
                    self.save_checkpoint()
                if args.validation_steps and self.global_step % args.validation_steps == 0:
                    self.validate()
                if self.global_step >= args.max_train_steps:
                    break
        progress.close()
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self.save_final(accelerator.unwrap_model(self.transformer))
        accelerator.end_training()
        return self.output_dir

    @torch.no_grad()
    def validate(self) -> list[Path]:
        """Generate the validation videos, write them as mp4 and log their frames."""
        if not self.accelerator.is_main_process:
            return []
        self.transformer.eval()
        written = []
        folder = self.output_dir / "validation" / f"step-{self.global_step}"
        for name, video, labels in self.validation_videos():
            frames = tensor_to_uint8_frames(video.cpu())
            if labels is not None:
                frames = draw_control_overlay(frames, labels)
            path = folder / f"{name}.mp4"
            write_mp4(frames, path, fps=self.args.fps)
            written.append(path)
            if self.args.report_to == "tensorboard":
                tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
                tracker.add_images(f"validation/{name}", frames[:: max(1, len(frames) // 4)], self.global_step, dataformats="NHWC")
        logger.info("validation videos: %s", ", ".join(map(str, written)))
        self.transformer.train()
        return written
