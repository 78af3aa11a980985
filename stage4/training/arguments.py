"""Stage 4 settings: stage 3's plus the stream consistency model's (SCM) distillation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from stage3.training.arguments import SwinArgs
from thematrix.config import ConfigError
from thematrix.model_dir import NO_TEXT_GUIDANCE, SCM_SAMPLER

LOSS_TYPES = ("l2", "huber")
STUDENT_KINDS = ("full", "lora")


@dataclass
class ScmArgs(SwinArgs):
    trained_sampler: ClassVar[str] = SCM_SAMPLER
    output_dir: str = "outputs/stage4"
    # A distilled 2B student moves far from its teacher at stage 3's 1e-5; consistency-distillation recipes
    # (LCM, PCM) train full models at 1e-6 to 1e-5. A LoRA student takes ~1e-4 (LCM-LoRA).
    learning_rate: float = 5e-6

    # --- teacher: the frozen stage-3 model and its ODE solver ---------------------------------------
    # N: the teacher's grouped DDIM schedule (the reference distilled 40 steps into 4); divisible by
    # num_noise_groups, giving N / G teacher steps per phase. The phase boundaries must lie on its grid,
    # which CogVideoX's trailing spacing gives whenever G divides N and the 1000 training timesteps.
    teacher_num_inference_steps: int = 40
    # k (PCM/LCM's skipping interval): teacher ODE steps between a training timestep t and its target s,
    # clamped at the phase boundary. 1 = one teacher forward per step and the teacher's 40-step ODE error;
    # the boundary information then reaches the top of a phase through N / G = 10 bootstrapped targets.
    # k >= N / G makes every target the teacher's own solution at the boundary (no bootstrapping, k forwards).
    skipping_interval: int = 1
    # Guidance distillation (the recipe's setting): the teacher's velocity is classifier-free guided with these
    # scales, as stage 3's streams are by default, so the student learns the guided ODE and needs one forward
    # per group at inference, with no CFG pass; the teacher pays for the guidance's extra forwards.
    distill_guidance: bool = True
    # Default: the teacher's own stream default, its record's (none where stage 3 dropped every caption), else
    # CogVideoX's DEFAULT_TEXT_GUIDANCE.
    guidance_scale: float | None = None
    control_guidance_scale: float = 1.0  # > 1 also distils stronger control following

    # --- student and target -------------------------------------------------------------------------
    student: str = "full"  # "full": every weight of a copy of the teacher trains; "lora": adapters only
    lora_rank: int = 64
    lora_alpha: float = 64.0  # scale = lora_alpha / lora_rank
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections
    # The target network theta^- <- mu theta^- + (1 - mu) theta after every optimizer step; LCM's 0.95
    # follows the student closely (consistency targets need not lag far) while damping step noise.
    ema_decay: float = 0.95
    loss_type: str = "l2"  # "l2", or "huber": LCM's pseudo-Huber sqrt(d^2 + c^2) - c, robust to outliers
    huber_c: float = 0.001  # LCM's c (latent units)

    # --- validation: the few-step stream ------------------------------------------------------------
    # One forward per outer iteration: each moves every group to its phase boundary. Default (and the only
    # value a student takes): num_noise_groups.
    validation_num_inference_steps: int | None = None
    # The student runs unguided: guidance is distilled in (distill_guidance) or not part of its ODE.
    validation_guidance_scale: float = 1.0

    def check(self) -> None:
        """With the window unset, what depends on it is checked once the trainer has taken it from the model."""
        super().check()
        groups, steps = self.num_noise_groups, self.validation_num_inference_steps
        if groups is not None and self.teacher_num_inference_steps % groups:
            raise ConfigError(
                f"args.teacher_num_inference_steps = {self.teacher_num_inference_steps} must be divisible by "
                f"args.num_noise_groups = {groups}: each phase holds N / G teacher steps"
            )
        if groups is not None and steps is not None and steps != groups:
            raise ConfigError(
                f"args.validation_num_inference_steps = {steps} must equal args.num_noise_groups = {groups}: the "
                "student takes one step per group; leave it unset"
            )
        if self.guidance_scale is not None:
            self.check_guidance()
        if self.skipping_interval < 1:
            raise ConfigError(f"args.skipping_interval must be at least 1 teacher step, is {self.skipping_interval}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"args.ema_decay must lie in [0, 1), is {self.ema_decay}")
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"args.loss_type is {self.loss_type!r}; use one of {LOSS_TYPES}")
        if self.student not in STUDENT_KINDS:
            raise ConfigError(f"args.student is {self.student!r}; use one of {STUDENT_KINDS}")

    def check_guidance(self) -> None:
        """Text guidance to distil needs captions: checked once the teacher's guidance is known (the trainer takes
        it from the teacher's record where unset)."""
        if self.distill_guidance and self.guidance_scale != NO_TEXT_GUIDANCE and self.caption_p_zero == 1:
            raise ConfigError(
                f"args.caption_p_zero = 1 with args.distill_guidance and args.guidance_scale = {self.guidance_scale}: "
                "every caption is dropped, so the teacher's text-guided velocity equals its unguided one and the "
                "student learns the teacher without guidance; lower args.caption_p_zero (the stage's default "
                f"{ScmArgs.caption_p_zero}) so the captions reach the teacher, or set args.distill_guidance = False"
            )
