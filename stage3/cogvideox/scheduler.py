"""Stage 3's scheduler: stage 2's noise schedule, sampled in Swin-DPM's grouped bands.

The window (G noise groups of W latent frames) is a property of how the model is trained and sampled, not
of the noise schedule: it is neither config nor state of the scheduler, so the saved ``scheduler/`` folder
stays a stock diffusers one. The trainer draws grouped training timesteps in stage 3's trainer; the stream
asks ``grouped_schedule`` for its sampling schedule.
"""

from __future__ import annotations

from stage2.cogvideox.scheduler import InteractiveScheduler
from thematrix.schedules import GroupedInferenceSchedule

CONDITION_FRAMES = 1  # the clean latent frame that starts every window


class SwinScheduler(InteractiveScheduler):
    """CogVideoX's schedule, sampled by groups: a window is 1 condition frame + G groups of W frames."""

    def grouped_schedule(self, num_inference_steps: int, num_groups: int) -> GroupedInferenceSchedule:
        """The sampling schedule: ``num_inference_steps`` (divisible by ``num_groups``) over ``num_groups`` bands."""
        return GroupedInferenceSchedule(self, num_inference_steps, num_groups)
