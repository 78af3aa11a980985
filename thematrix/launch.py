"""``python -m thematrix.launch [accelerate launch options] SCRIPT [ARGS...]``: ``accelerate launch`` that ends clean.

accelerate answers a failed training process with a traceback of its own launcher (one process) or
torchrun's failure report and log lines (several). A training script that meets bad input has
already printed its one ``error:`` line (``thematrix.cli.run``), so this launcher adds nothing after
it; for any other failure (a crash, a signal) it adds one line saying which rank ended how. Either
way it exits with the training process's exit code (128 + N for signal N, as shells do).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from typing import Optional

from accelerate.commands.launch import launch_command, launch_command_parser
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from thematrix.cli import USAGE_EXIT_CODE

# torchrun's own log lines about a failed rank say what the summary line below says.
TORCHRUN_LOGGER = "torch.distributed.elastic"
SIGNAL_EXIT_BASE = 128


def exit_code(returncode: int) -> int:
    """A process's exit status as a shell reports it: a process killed by signal N gives 128 + N."""
    return SIGNAL_EXIT_BASE - returncode if returncode < 0 else returncode


def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def _report(returncode: int, rank: int) -> int:
    if returncode != USAGE_EXIT_CODE:  # bad input: the process printed its error line, which stays the last
        print(f"training failed: the process of rank {rank} {_describe(returncode)} (its output is above)",
              file=sys.stderr)
    return exit_code(returncode)


def main(argv: Optional[list[str]] = None) -> int:
    args = launch_command_parser().parse_args(argv)
    logging.getLogger(TORCHRUN_LOGGER).setLevel(logging.CRITICAL)
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
