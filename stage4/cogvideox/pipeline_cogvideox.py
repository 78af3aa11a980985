"""Stage 4's pipeline: stage 3's unbounded stream with the distilled SCM student, one step per group.

The streaming loop is stage 3's; only the step differs (``ScmScheduler.grouped_schedule`` steps by the
consistency function), the step count (``num_inference_steps = num_groups``, the only one a student is
trained for: each outer iteration is one forward that lands every group on its phase boundary and emits
W latent frames) and the default guidance: none, which the student has distilled in (``distill_guidance``)
or was not trained to follow.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from stage3.cogvideox.pipeline_cogvideox import RECIPE_NUM_GROUPS, Controls, StreamChunk, SwinDPMPipeline
from stage4.cogvideox.scheduler import ScmScheduler
from thematrix.model_dir import SCM_SAMPLER

STUDENT_GUIDANCE_SCALE = 1.0


class ScmPipeline(SwinDPMPipeline):
    """``SwinDPMPipeline`` for an SCM student: one forward per emitted group."""

    scheduler_class = ScmScheduler
    trained_sampler = SCM_SAMPLER

    @staticmethod
    def check_steps(num_inference_steps: int, num_groups: int) -> None:
        """One step per group: the student is trained to land each group on its phase boundary, so a step that
        stops inside a phase (N > G) has no defined target."""
        if num_inference_steps != num_groups:
            raise ValueError(
                f"num_inference_steps = {num_inference_steps} with num_groups = {num_groups}: an SCM student takes one "
                f"step per group, trained to reach each phase boundary, and has no defined jump inside a phase; use "
                f"num_inference_steps = num_groups = {num_groups} (the default)"
            )

    def stream(
        self,
        prompt: str,
        initial_video: torch.Tensor,
        controls: Controls,
        num_groups: int = RECIPE_NUM_GROUPS,
        num_inference_steps: int | None = None,
        guidance_scale: float = STUDENT_GUIDANCE_SCALE,
        **options,
    ) -> Iterator[StreamChunk]:
        """``SwinDPMPipeline.stream`` with ``num_inference_steps`` = ``num_groups`` (the default; any other count is
        refused) and guidance off; other options are stage 3's."""
        num_inference_steps = num_inference_steps or num_groups
        self.check_steps(num_inference_steps, num_groups)
        return super().stream(
            prompt,
            initial_video,
            controls,
            num_groups=num_groups,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            **options,
        )
