"""Stage 1's scheduler: CogVideoX's own noise schedule.

It holds no training state: the trainer draws training timesteps in the stage's own code
(``Trainer.sample_timesteps``). Later stages subclass ``GameScheduler`` for their sampling schedules.
"""

from __future__ import annotations

from diffusers import CogVideoXDPMScheduler


class GameScheduler(CogVideoXDPMScheduler):
    """CogVideoX's DPM scheduler under the name later stages build on, loadable from any CogVideoX ``scheduler/``."""
