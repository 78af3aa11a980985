"""Entry-point wrapper: known input errors end the program with their message, not a traceback."""

from __future__ import annotations

import sys
from typing import Callable

from thematrix.config import ConfigError
from thematrix.controls import ControlError
from thematrix.data.dataset import DatasetError
from thematrix.data.index import IndexFormatError
from thematrix.model_dir import ModelDirError

USER_ERRORS = (ConfigError, ControlError, DatasetError, IndexFormatError, ModelDirError, FileNotFoundError, FileExistsError)
USAGE_EXIT_CODE = 2


def run(main: Callable[[], object]) -> None:
    """Call ``main``; a bad setting, path or control string exits with code 2 and one readable line."""
    try:
        main()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USAGE_EXIT_CODE)
