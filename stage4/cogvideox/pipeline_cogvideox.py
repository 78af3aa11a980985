"""Stage 4's pipeline: stage 3's unbounded stream with the distilled SCM student, a few steps per group.

The streaming loop is stage 3's; only the step differs (``ScmScheduler.grouped_schedule`` steps by the
consistency function) and the defaults: ``num_inference_steps = num_groups``, so each outer iteration is
one forward that lands every group on its phase boundary and emits W latent frames, and no classifier-free
guidance, which the student has distilled in (``distill_guidance``) or was not trained to follow.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from stage3.cogvideox.pipeline_cogvideox import Controls, StreamChunk, SwinDPMPipeline
from stage4.cogvideox.scheduler import ScmScheduler

STUDENT_GUIDANCE_SCALE = 1.0
DEFAULT_NUM_GROUPS = 4  # G of the reference recipe, as stage 3's stream


class ScmPipeline(SwinDPMPipeline):
    """``SwinDPMPipeline`` for an SCM student: one forward per emitted group by default."""

    scheduler_class = ScmScheduler

    def stream(
        self,
        prompt: str,
        initial_video: torch.Tensor,
        controls: Controls,
        num_groups: int = DEFAULT_NUM_GROUPS,
        num_inference_steps: Optional[int] = None,
        guidance_scale: float = STUDENT_GUIDANCE_SCALE,
        **options,
    ) -> Iterator[StreamChunk]:
        """``SwinDPMPipeline.stream`` with ``num_inference_steps`` defaulting to ``num_groups`` (a multiple
        of it takes more steps per band) and guidance off; other options are stage 3's."""
        return super().stream(
            prompt, initial_video, controls, num_groups=num_groups,
            num_inference_steps=num_inference_steps or num_groups, guidance_scale=guidance_scale, **options,
        )
