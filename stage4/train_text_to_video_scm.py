"""Stage 4: SCM, phased consistency distillation of the stage-3 model into a few-step streaming student.

Run through train_text_to_video_scm.sh. A training window is stage 3's (a clean condition latent frame,
then G groups of W latent frames, group g in noise band g), with every group at the same teacher-grid
offset t in its band. The frozen teacher (the stage-3 model, optionally classifier-free guided) walks the
window k DDIM steps down its N-step grid to s, never below the band's phase boundary b. The student's
consistency function f(x_t, t) = c_skip x_t + c_out DDIM(x_t -> b) learns to match the EMA target's
f(x_s, s) (x_s itself when s = b), on the noisy frames only. At inference one forward per outer iteration
lands every group on its boundary.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig

from stage3.train_text_to_video_sft import SwinTrainer
from stage4.cogvideox.pipeline_cogvideox import ScmPipeline
from stage4.cogvideox.scheduler import ScmScheduler, distillation_timesteps, teacher_schedule
from stage4.training.arguments import ScmArgs
from thematrix.acceleration import compile_blocks
from thematrix.cli import run
from thematrix.config import ConfigError, first_given
from thematrix.model_dir import (
    DEFAULT_TEXT_GUIDANCE,
    NO_TEXT_GUIDANCE,
    SWIN_DPM_SAMPLER,
    check_sampler,
    save_model_dir,
    transformer_class_name,
)
from thematrix.models import InteractiveCogVideoXTransformer3DModel
from thematrix.training.sharding import full_trainable_weights

DEFAULT_CONFIG = Path(__file__).parent / "training" / "scm_config.py"


class EmaTarget:
    """LCM's target network: theta^- <- mu theta^- + (1 - mu) theta over the student's trainable weights.

    A copy of the student, made before the trainer splits or wraps it, so it is whole on every process in
    every training mode (``thematrix.training.sharding``). It shares the student's frozen weights, so a LoRA
    student's target costs only its adapters; its averaged weights are float32, whatever the student's
    compute dtype, in which it runs as the student does (``__call__``). ``state_dict`` holds them alone, for
    accelerate to checkpoint with the run.
    """

    def __init__(self, student: torch.nn.Module, decay: float, compute_dtype: torch.dtype):
        frozen = {id(param): param for param in student.parameters() if not param.requires_grad}
        self.module = copy.deepcopy(student, memo=frozen).requires_grad_(False).eval()
        self.decay, self.compute_dtype = decay, compute_dtype
        self.names = [name for name, param in student.named_parameters() if param.requires_grad]
        own = dict(self.module.named_parameters())
        self.weights = [own[name] for name in self.names]
        for weight in self.weights:
            weight.data = weight.data.float()

    def to(self, device: torch.device) -> EmaTarget:
        """Move the whole target: its averaged weights and buffers (e.g. the control embedding table); the frozen
        weights it shares are the student's, on ``device`` already."""
        self.module.to(device)
        return self

    def __call__(self, *args, **kwargs):
        """The target's forward, its float32 weights computed in ``compute_dtype`` under autocast: training modes
        that run the student without autocast (DeepSpeed casts the student itself) would otherwise feed it
        ``compute_dtype`` inputs against float32 weights."""
        device_type = self.weights[0].device.type if self.weights else "cpu"
        with torch.autocast(device_type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32):
            return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, student_weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        """One step towards the student's whole trainable weights, given as (name, weight) in ``self.names`` order."""
        targets = []
        for (name, student_weight), expected, weight in zip(student_weights, self.names, self.weights, strict=True):
            if name != expected:
                raise RuntimeError(f"the EMA target's weight {expected} was paired with the student's {name}")
            targets.append(student_weight.to(weight.dtype))
        # One multi-weight operation rather than one per weight: small models' steps are bound by such calls.
        torch._foreach_lerp_(self.weights, targets, 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: weight.detach().clone() for name, weight in zip(self.names, self.weights)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.names):
            raise ConfigError(
                "the checkpoint's EMA target does not match this run's trainable weights (args.student or "
                "args.lora_* changed); set args.resume_from_checkpoint = None to start fresh"
            )
        with torch.no_grad():
            for name, weight in zip(self.names, self.weights):
                weight.copy_(state[name])


class ScmTrainer(SwinTrainer):
    """Distils the frozen stage-3 teacher into a student (a full copy or LoRA) against an EMA target."""

    args_class = ScmArgs
    pipeline_class = ScmPipeline
    scheduler_class = ScmScheduler

    def check_settings(self) -> None:
        """A stage-3 model to distil (its transformer's class, and its record's sampler: a stage-2 model never
        trained the window), then stage 3's checks (window, vocabulary, clips), then one validation step per group
        and the teacher's text guidance where unset: its own stream default, as its record gives it."""
        args = self.args
        found = transformer_class_name(self.model_dir)
        if found != InteractiveCogVideoXTransformer3DModel.__name__:
            raise ConfigError(
                f"args.pretrained_model_name_or_path = {args.pretrained_model_name_or_path!r} holds a {found}; stage 4 "
                "distils a stage-3 model: pass stage 3's <output_dir>/model"
            )
        check_sampler(self.model_dir, SWIN_DPM_SAMPLER, "args.pretrained_model_name_or_path")
        super().check_settings()
        args.validation_num_inference_steps = args.validation_num_inference_steps or args.num_noise_groups
        recorded = self.model_record.guidance_scale if self.model_record else None
        args.guidance_scale = first_given(args.guidance_scale, recorded, DEFAULT_TEXT_GUIDANCE)
        args.check_guidance()
        try:
            self.teacher_schedule = teacher_schedule(
                self.scheduler, args.teacher_num_inference_steps, args.num_noise_groups
            )
        except ValueError as error:
            raise ConfigError(
                f"args.teacher_num_inference_steps = {args.teacher_num_inference_steps}: {error}"
            ) from None
        # The student's consistency function, on the same grid: from t to the phase boundary b of its band.
        self.consistency = self.scheduler.grouped_schedule(args.teacher_num_inference_steps, args.num_noise_groups)

    def build_transformer(self) -> torch.nn.Module:
        """The student starts as the teacher: all of it trains, or LoRA adapters (zero at start) on attention. The
        EMA target starts as the student, copied here, before the trainer splits or wraps it."""
        if self.args.student == "full":
            transformer = super().build_transformer()
        else:
            transformer = self.load_interactive_transformer()
            transformer.requires_grad_(False)
            transformer.add_adapter(
                LoraConfig(
                    r=self.args.lora_rank,
                    lora_alpha=self.args.lora_alpha,
                    init_lora_weights=True,
                    target_modules=list(self.args.lora_target_modules),
                )
            )
        self.ema = EmaTarget(transformer, self.args.ema_decay, self.weight_dtype)
        return transformer

    def after_setup(self) -> None:
        """The frozen teacher (the stage-3 model, whole on every process in the compute dtype), and the EMA target on
        the device, which checkpoints hold with the student."""
        device = self.accelerator.device
        teacher = (
            InteractiveCogVideoXTransformer3DModel.from_pretrained(
                self.model_dir, subfolder="transformer", dtype=self.weight_dtype
            )
            .requires_grad_(False)
            .eval()
        )
        # The teacher is called through the pipeline's guided velocity, as the stage-3 stream calls it.
        self.teacher_pipeline = self.pipeline_class(
            tokenizer=None, text_encoder=None, vae=None, transformer=teacher.to(device), scheduler=None
        )

        self.accelerator.register_for_checkpointing(self.ema.to(device))
        if self.args.compile_blocks:  # the teacher's and the target's forwards outnumber the student's
            compile_blocks(teacher)
            compile_blocks(self.ema.module)

    def after_optimizer_step(self) -> None:
        """The target follows the student's whole float32 weights (gathered under FSDP and DeepSpeed): theta^- <- mu
        theta^- + (1 - mu) theta, before the step's checkpoint, so a checkpoint's target matches its student."""
        self.ema.update(full_trainable_weights(self.accelerator, self.transformer))

    def velocity(self, model: torch.nn.Module | EmaTarget, latents, timesteps, prompt_embeds, controls) -> torch.Tensor:
        """One conditional transformer forward (float32 output)."""
        return model(
            hidden_states=latents.to(self.weight_dtype),
            encoder_hidden_states=prompt_embeds,
            timestep=timesteps,
            controls=controls,
            return_dict=False,
        )[0].float()

    @torch.no_grad()
    def teacher_solve(self, latents, path, prompt_embeds, controls) -> torch.Tensor:
        """x_s: the teacher's DDIM steps along ``path`` [B, k + 1, F] from x_t, guided when distilling guidance."""
        args = self.args
        guidance, control_guidance = (
            (args.guidance_scale, args.control_guidance_scale)
            if args.distill_guidance
            else (NO_TEXT_GUIDANCE, NO_TEXT_GUIDANCE)
        )
        negative = self.empty_prompt_embeds.expand_as(prompt_embeds)
        for now, after in zip(path.unbind(1)[:-1], path.unbind(1)[1:]):
            if torch.equal(now, after):  # every window has reached its boundary
                break
            velocity = self.teacher_pipeline.guided_velocity(
                latents.to(self.weight_dtype), now, prompt_embeds, negative, controls, guidance, control_guidance
            )
            latents = self.teacher_schedule.step(velocity, latents, now, after)[0]
        return latents

    def compute_loss(self, batch: dict[str, Any], first_sample_position: int) -> torch.Tensor:
        """Consistency loss d(f_theta(x_t, t), f_ema(x_s, s)) over the noisy frames, both mapped to boundary b."""
        args = self.args
        latents, noise, prompt_embeds, generators = self.prepare_batch(batch, first_sample_position)
        draws = [
            distillation_timesteps(self.teacher_schedule, args.group_size, args.skipping_interval, generator)
            for generator in generators
        ]
        path, boundary = (torch.cat(parts) for parts in zip(*draws))  # [B, k + 1, F], [B, F]
        timesteps, targets = path[:, 0], path[:, -1]
        noisy = self.noisy_latents(latents, noise, timesteps)
        controls = self.model_kwargs(batch, generators)["controls"]

        solved = self.teacher_solve(noisy, path, prompt_embeds, controls)
        if torch.equal(targets, boundary):
            target = solved  # f(x_b, b) = x_b: the boundary condition, no target forward needed
        else:
            with torch.no_grad():
                velocity = self.velocity(self.ema, solved, targets, prompt_embeds, controls)
            target = self.consistency.step(velocity, solved, targets, boundary)[0]

        velocity = self.velocity(self.transformer, noisy, timesteps, prompt_embeds, controls)
        prediction = self.consistency.step(velocity, noisy, timesteps, boundary)[0]
        squared = (prediction - target) ** 2
        error = squared if args.loss_type == "l2" else (squared + args.huber_c**2).sqrt() - args.huber_c
        frame_error = error.flatten(2).mean(dim=2)
        mask = self.loss_mask(latents)
        return ((frame_error * mask).sum(dim=1) / mask.sum(dim=1)).mean()

    def save_final(self, transformer: torch.nn.Module) -> None:
        """The student as a full model directory: the stage-4 pipeline and inference read it.

        A LoRA student is fused with every weight in float32 and saved in float32, so the directory holds the
        student exactly: fused into a bf16 base, an adapter update smaller than the weight's bf16 rounding
        step (|delta / W| < 2^-9) is lost, which is most of a small adapter. Inference in bf16 (the default
        on a GPU) rounds the fused weights to bf16 when it loads them, with the same loss: run a LoRA
        student in float32 where its adapter is small.
        """
        if self.args.student != "lora":
            super().save_final(transformer)
            return
        transformer.to(torch.float32)
        transformer.fuse_lora()
        transformer.unload_lora()
        save_model_dir(transformer, self.model_dir, self.final_model_dir, self.args.generation_defaults())


def main(argv=None) -> Path:
    return ScmTrainer.main(DEFAULT_CONFIG, argv)


if __name__ == "__main__":
    run(main)
