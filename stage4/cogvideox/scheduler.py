"""Stage 4's scheduler: phased consistency distillation whose phases are Swin-DPM's noise bands.

Phase g holds the timesteps (b_g, b_{g+1}] of band g, with boundaries ``phase_boundaries`` (-1, 249, 499,
749, 999 for G = 4). The student's consistency function maps a frame at timestep t to its phase boundary
b = b_g along the teacher's ODE::

    f(x, t) = c_skip(t, b) x + c_out(t, b) DDIM(x, x_0(x, t), t -> b)

with LCM's scalings measured from b (``thematrix.schedules.c_skip``/``c_out``): f(x, b) = x exactly. The
same formula from t to any t' (``ConsistencySchedule.step``) is the few-step sampler: with N = G steps
every group sits at a band top and one forward lands it on its boundary.

Like the window shape, the distillation grid (the teacher's schedule, the skipping interval) is a property
of training, not of the noise schedule: the stage-4 trainer builds it with ``teacher_schedule`` and draws
each window's timesteps with ``distillation_timesteps``; the scheduler holds no state of it, and the saved
``scheduler/`` folder stays stock diffusers.
"""

from __future__ import annotations

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


def consistency_scalings(
    timesteps: torch.Tensor, boundary: torch.Tensor, ndim: int
) -> tuple[torch.Tensor, torch.Tensor]:
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
    """Swin-DPM's scheduler whose sampling schedule steps by the consistency function."""

    def grouped_schedule(self, num_inference_steps: int, num_groups: int) -> ConsistencySchedule:
        return ConsistencySchedule(self, num_inference_steps, num_groups)


def teacher_schedule(scheduler, teacher_num_inference_steps: int, num_groups: int) -> GroupedInferenceSchedule:
    """The teacher's grouped DDIM schedule of N = ``teacher_num_inference_steps``, whose grid must hold the phase
    boundaries (it does with CogVideoX's trailing spacing whenever G divides N and the training timesteps)."""
    schedule = GroupedInferenceSchedule(scheduler, teacher_num_inference_steps, num_groups)
    boundaries = phase_boundaries(num_groups, scheduler.config.num_train_timesteps)
    if not torch.equal(schedule.window_timesteps(schedule.steps_per_band), boundaries[:-1]):
        raise ValueError(
            f"the teacher's {teacher_num_inference_steps}-step grid {schedule.timesteps.tolist()} misses phase "
            f"boundaries {boundaries.tolist()}; the scheduler needs timestep_spacing='trailing' (CogVideoX's)"
        )
    return schedule


def distillation_timesteps(
    teacher: GroupedInferenceSchedule, group_size: int, skipping_interval: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One window's teacher path and phase boundaries, LongTensors [1, k + 1, 1 + G * W] and [1, 1 + G * W].

    Draw i ~ U{0, ..., N/G - 1}: group g starts at the i-th teacher timestep of its band (all groups at the same
    offset, staggered by one band as in sampling), and the path walks k = ``skipping_interval`` teacher steps
    down, stopping at the band's lower phase boundary. path[:, 0] is t, path[:, -1] the target timestep s; the
    condition frame stays at timestep 0, its own boundary, so its consistency output is itself.
    """
    start = int(torch.randint(0, teacher.steps_per_band, (1,), generator=generator, device=generator.device))
    path = torch.stack(
        [
            expand_group_timesteps(teacher.window_timesteps(min(start + step, teacher.steps_per_band)), group_size)
            for step in range(skipping_interval + 1)
        ]
    )
    boundaries = phase_boundaries(teacher.num_groups, teacher.scheduler.config.num_train_timesteps)
    group_boundaries = phase_boundary_below(teacher.window_timesteps(start), boundaries)
    boundary = expand_group_timesteps(group_boundaries, group_size)
    return path[None].to(generator.device), boundary[None].to(generator.device)
