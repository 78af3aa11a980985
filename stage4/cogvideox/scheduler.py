"""Stage 4's scheduler: phased consistency distillation whose phases are Swin-DPM's noise bands.

Phase g holds the timesteps (b_g, b_{g+1}] of band g, with boundaries ``phase_boundaries`` (-1, 249, 499,
749, 999 for G = 4). The student's consistency function maps a frame at timestep t to its phase boundary
b = b_g along the teacher's ODE::

    f(x, t) = c_skip(t, b) x + c_out(t, b) DDIM(x, x_0(x, t), t -> b)

with LCM's scalings measured from b (``thematrix.schedules.c_skip``/``c_out``): f(x, b) = x exactly. The
same formula from t to any t' (``ConsistencySchedule.step``) is the few-step sampler: with N = G steps
every group sits at a band top and one forward lands it on its boundary.

Like the window shape, the distillation grid is a property of training, not of the noise schedule: the
trainer sets it with ``configure_distillation`` and the saved ``scheduler/`` folder stays stock diffusers.
"""

from __future__ import annotations

from typing import Optional

import torch

from stage3.cogvideox.scheduler import SwinScheduler
from thematrix.schedules import (
    GroupedInferenceSchedule,
    c_out,
    c_skip,
    expand_group_timesteps,
    phase_boundaries,
    phase_boundary_below,
)


def consistency_scalings(timesteps: torch.Tensor, boundary: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of [B] or [B, F] timesteps measured from ``boundary``, shaped to broadcast over rank ``ndim``."""
    shape = (*timesteps.shape, *(1,) * (ndim - timesteps.ndim))
    return c_skip(timesteps, boundary).reshape(shape), c_out(timesteps, boundary).reshape(shape)


class ConsistencySchedule(GroupedInferenceSchedule):
    """Swin-DPM's grouped schedule whose step is the consistency function toward the step's target timestep."""

    def step(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        timesteps_now: torch.Tensor,
        timesteps_next: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """c_skip(t, t') x + c_out(t, t') DDIM(x, t -> t'); returns (x_next, predicted x_0).

        With t' the phase boundary of t this is the student's consistency function; frames with t' == t
        (the condition frame, parked groups) come back exactly unchanged.
        """
        moved, pred_original = super().step(model_output, sample, timesteps_now, timesteps_next)
        skip, out = consistency_scalings(timesteps_now, timesteps_next, sample.ndim)
        return (skip * sample + out * moved).to(sample.dtype), pred_original


class ScmScheduler(SwinScheduler):
    """Swin-DPM's scheduler plus SCM's distillation timesteps; its sampling schedule steps by consistency.

    ``configure_window(G, W)`` then ``configure_distillation(N, k)`` before ``sample_distillation_timesteps``.
    """

    teacher_schedule: Optional[GroupedInferenceSchedule] = None
    skipping_interval: Optional[int] = None

    def grouped_schedule(self, num_inference_steps: int, num_groups: int) -> ConsistencySchedule:
        return ConsistencySchedule(self, num_inference_steps, num_groups)

    def configure_distillation(self, teacher_num_inference_steps: int, skipping_interval: int) -> None:
        """The teacher's grouped DDIM schedule of ``teacher_num_inference_steps`` (N) and the skipping interval k."""
        if skipping_interval < 1:
            raise ValueError(f"skipping_interval must be at least 1 teacher step, got {skipping_interval}")
        if self.num_noise_groups is None:
            raise RuntimeError("call scheduler.configure_window(num_noise_groups, group_size) before configure_distillation")
        schedule = GroupedInferenceSchedule(self, teacher_num_inference_steps, self.num_noise_groups)
        boundaries = phase_boundaries(self.num_noise_groups, self.config.num_train_timesteps)
        if not torch.equal(schedule.window_timesteps(schedule.steps_per_band), boundaries[:-1]):
            raise ValueError(
                f"the teacher's {teacher_num_inference_steps}-step grid {schedule.timesteps.tolist()} misses phase "
                f"boundaries {boundaries.tolist()}; the scheduler needs timestep_spacing='trailing' (CogVideoX's)"
            )
        self.teacher_schedule, self.skipping_interval = schedule, skipping_interval

    def sample_distillation_timesteps(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One window's teacher path and phase boundaries, LongTensors [1, k + 1, 1 + G * W] and [1, 1 + G * W].

        Draw i ~ U{0, ..., N/G - 1}: group g starts at the i-th teacher timestep of its band (all groups at the
        same offset, staggered by one band as in sampling), and the path walks k teacher steps down, stopping at
        the band's lower phase boundary. path[:, 0] is t, path[:, -1] the target timestep s; the condition frame
        stays at timestep 0, its own boundary, so its consistency output is itself.
        """
        if self.teacher_schedule is None:
            raise RuntimeError(
                "ScmScheduler's distillation grid is not set: call scheduler.configure_distillation("
                "teacher_num_inference_steps, skipping_interval) first (the stage-4 trainer does it)"
            )
        schedule, group_size = self.teacher_schedule, self.group_size
        start = int(torch.randint(0, schedule.steps_per_band, (1,), generator=generator, device=generator.device))
        path = torch.stack([
            expand_group_timesteps(schedule.window_timesteps(min(start + step, schedule.steps_per_band)), group_size)
            for step in range(self.skipping_interval + 1)
        ])
        boundaries = phase_boundaries(self.num_noise_groups, self.config.num_train_timesteps)
        group_boundaries = phase_boundary_below(schedule.window_timesteps(start), boundaries)
        boundary = expand_group_timesteps(group_boundaries, group_size)
        return path[None].to(generator.device), boundary[None].to(generator.device)
