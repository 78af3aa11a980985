"""What keeps a long run from ending badly: stop signals, non-finite values and free disk space.

Every decision that changes what the processes of a run do next (stop, skip a step, refuse to save) is
agreed by all of them (``any_process``, ``main_process_decides``), so no process waits forever in a
collective that the others left.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch.distributed.tensor import DTensor

logger = logging.getLogger(__name__)

# EX_TEMPFAIL of sysexits.h: the run stopped on request after saving a checkpoint; the same command resumes it.
PREEMPTED_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# One preemption often arrives twice within milliseconds (the launcher forwards it while the cluster or the
# terminal signals every process); only a signal later than this ends the process at once.
REPEATED_SIGNAL_WINDOW_S = 2.0
# Estimates leave this much room for what they do not count (file headers, pickled RNG states, logs).
DISK_HEADROOM = 1.1
GIB = 2**30


class RunFailed(RuntimeError):
    """A check stopped the run; the message names the step, what went wrong and what to try."""


class RunPreempted(Exception):
    """The run stopped on SIGTERM or SIGINT after saving a checkpoint; rerunning the same command resumes it."""

    exit_code = PREEMPTED_EXIT_CODE


class StopSignals:
    """SIGTERM and SIGINT turned into a stop at a step boundary, while used as a context manager.

    Before training starts (``training`` False) a signal stops the run at once by raising ``RunPreempted``:
    there is nothing to save. During training the first signal only sets ``requested``: the trainer saves
    a checkpoint at its next step boundary and raises ``RunPreempted``. A repeat within
    REPEATED_SIGNAL_WINDOW_S is the same request delivered twice; a later one ends the process at once.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.training = False
        self.received: str | None = None  # name of the first signal
        self._received_at = 0.0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python runs handlers in the main thread only
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        self.restore()

    def restore(self) -> None:
        """Give the signals back to the handlers from before (after a stop's checkpoint, nothing is left to save)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received, self._received_at = name, self.clock()
            if not self.training:
                raise RunPreempted(f"{name} before training started; nothing to save")
            logger.warning(
                "%s: the run saves a checkpoint at the end of this step and exits with code %d; "
                "a second signal ends it at once",
                name,
                PREEMPTED_EXIT_CODE,
            )
            return
        if self.clock() - self._received_at < REPEATED_SIGNAL_WINDOW_S:
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def any_process(accelerator: Accelerator, *flags: bool) -> list[bool]:
    """For each flag, whether any process has it set: every process then takes the same branch."""
    if accelerator.num_processes == 1:
        return list(flags)
    votes = torch.tensor([float(flag) for flag in flags], device=accelerator.device)
    return [bool(vote > 0) for vote in accelerator.reduce(votes, reduction="sum")]


def main_process_decides(accelerator: Accelerator, check: Callable[[], str | None]) -> str | None:
    """``check`` run on the main process, its answer (an error message or None) given to every process."""
    answer = [check() if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(answer)
    return answer[0]


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters holding a NaN or an infinity, in this process's share of a split (FSDP)
    weight: ``any_process`` tells whether another process found one."""
    return [
        name
        for name, param in model.named_parameters()
        if param.requires_grad and not torch.isfinite(local_shard(param.detach())).all()
    ]


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor that FSDP splits over the processes (a DTensor), else the tensor."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def stability_advice(args) -> str:
    """What to try when a run diverges, with the current values of the settings it names."""
    return (
        f"try a lower args.learning_rate (now {args.learning_rate:g}), a tighter args.max_grad_norm (now "
        f"{args.max_grad_norm:g}) or more precision (args.mixed_precision = 'no', now {args.mixed_precision!r}); "
        f"these may change on resume. args.max_nonfinite_steps = K (now {args.max_nonfinite_steps}) skips up to "
        "K such steps instead"
    )


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path``, or will hold it once it is created."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free


def gib(num_bytes: float) -> str:
    return f"{num_bytes / GIB:.2f} GiB"


def disk_space_problem(path: Path, needs: Iterable[tuple[str, int]], fix: str) -> str | None:
    """A message when the disk of ``path`` lacks room for ``needs`` ((what, bytes) pairs), else None."""
    needs = [(what, size) for what, size in needs if size > 0]
    needed = sum(size for _, size in needs) * DISK_HEADROOM
    free = free_disk_bytes(path)
    if needed <= free:
        return None
    parts = ", ".join(f"{what} ({gib(size)})" for what, size in needs)
    return f"{path}: the run needs about {gib(needed)} there for {parts}, but only {gib(free)} is free; {fix}"
