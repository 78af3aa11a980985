"""``python -m thematrix.launch [accelerate launch options] SCRIPT [ARGS...]``: ``accelerate launch`` that ends clean.

accelerate answers a failed training process with a traceback of its own launcher (one process) or
torchrun's failure report and log lines (several). A training script that meets bad input has
already printed its one ``error:`` line (``thematrix.cli.run``), so this launcher adds nothing after
it, nor after a run that stopped on a signal with its checkpoint (code 75, a ``stopped:`` line); for
any other failure (a crash, a signal) it adds one line saying which rank ended how. Either way it
exits with the training process's exit code (128 + N for signal N, as shells do).

SIGTERM and SIGINT (preemption, ``kill``, Ctrl-C) are the training processes' to handle: each saves a
checkpoint at its next step boundary. This launcher passes them on to its children (the training
process, or torchrun's workers) and keeps torchrun from handling them, which would kill its workers
30 s later.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from accelerate.commands.launch import launch_command, launch_command_parser
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from thematrix.cli import USAGE_EXIT_CODE
from thematrix.training.run_safety import PREEMPTED_EXIT_CODE, STOP_SIGNALS

# torchrun's own log lines about a failed rank say what the summary line below says.
TORCHRUN_LOGGER = "torch.distributed.elastic"
SIGNAL_EXIT_BASE = 128
# Exit codes after which the training process's own last line says it all.
SELF_EXPLAINED_EXIT_CODES = (USAGE_EXIT_CODE, PREEMPTED_EXIT_CODE)
# torchrun's --signals_to_handle (read from this variable): the stop signals are left to the workers.
TORCHRUN_SIGNALS_VARIABLE = "PET_SIGNALS_TO_HANDLE"
TORCHRUN_SIGNALS = "SIGHUP,SIGQUIT"


def child_processes() -> list[int]:
    """Ids of this process's children, read from Linux's /proc (none found elsewhere)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # the process may end while it is read
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # "pid (name) state ppid ..."
            if parent == os.getpid():
                children.append(int(stat.parent.name))
    return children


def _pass_on(signum: int, frame) -> None:
    for child in child_processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)


def exit_code(returncode: int) -> int:
    """A process's exit status as a shell reports it: a process killed by signal N gives 128 + N."""
    return SIGNAL_EXIT_BASE - returncode if returncode < 0 else returncode


def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def _report(returncode: int, rank: int) -> int:
    if returncode not in SELF_EXPLAINED_EXIT_CODES:  # the process's error or stop line stays the last
        print(
            f"training failed: the process of rank {rank} {_describe(returncode)} (its output is above)",
            file=sys.stderr,
        )
    return exit_code(returncode)


def main(argv: list[str] | None = None) -> int:
    args = launch_command_parser().parse_args(argv)
    logging.getLogger(TORCHRUN_LOGGER).setLevel(logging.CRITICAL)
    os.environ[TORCHRUN_SIGNALS_VARIABLE] = TORCHRUN_SIGNALS
    for signum in STOP_SIGNALS:
        signal.signal(signum, _pass_on)
    try:
        launch_command(args)
    except subprocess.CalledProcessError as error:  # one process
        return _report(error.returncode, rank=0)
    except ChildFailedError as error:  # several processes, through torchrun
        rank, failure = error.get_first_failure()
        return _report(failure.exitcode, rank)
    return 0


if __name__ == "__main__":
    sys.exit(main())
