"""Stage 2's scheduler: the noise schedule is stage 1's; only the model's conditioning changes."""

from stage1.cogvideox.scheduler import GameScheduler


class InteractiveScheduler(GameScheduler):
    """Stage 1's scheduler under the name stage 2's pipeline and later stages build on."""
