"""Entry-point wrapper: known input errors end the program with their message, not a traceback."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from thematrix.config import ConfigError
from thematrix.controls import ControlError
from thematrix.data.dataset import DatasetError
from thematrix.data.index import IndexFormatError
from thematrix.hub import ModelIdError
from thematrix.model_dir import ModelDirError
from thematrix.training.run_safety import RunFailed, RunPreempted

USER_ERRORS = (
    ConfigError,
    ControlError,
    DatasetError,
    IndexFormatError,
    ModelDirError,
    ModelIdError,
    FileNotFoundError,
    FileExistsError,
    RunFailed,
)
USAGE_EXIT_CODE = 2
# Bad input fails every rank of a multi-process run alike. Ranks other than 0 wait this long before
# printing: once rank 0 has failed the launcher stops them, so a common error prints once, while an
# error that only one rank meets is still printed.
OTHER_RANKS_ERROR_DELAY_S = 10.0


def _exit_with_line(line: str, code: int) -> NoReturn:
    if int(os.environ.get("RANK", "0")) != 0:
        time.sleep(OTHER_RANKS_ERROR_DELAY_S)
    print(line, file=sys.stderr)
    sys.exit(code)


def run(main: Callable[[], object]) -> None:
    """Call ``main``; a bad setting, path or control string (or a run one of its checks stopped) exits with code 2
    and one readable line, a run stopped by SIGTERM or SIGINT with code 75 once its checkpoint is saved."""
    try:
        main()
    except RunPreempted as stop:
        _exit_with_line(f"stopped: {stop}", stop.exit_code)
    except USER_ERRORS as error:
        _exit_with_line(f"error: {error}", USAGE_EXIT_CODE)
