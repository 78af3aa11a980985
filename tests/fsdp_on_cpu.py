"""``python tests/fsdp_on_cpu.py STAGE_MODULE [ARGS...]``: a stage's training entry point under accelerate's FSDP on
CPU processes, for the tests; launched by ``launch_fsdp_on_cpu`` (tests/launching.py).

accelerate turns FSDP on for accelerators only: on CPU processes it sets up plain data parallel over gloo and
ignores the FSDP settings of the launch. torch's ``fully_shard`` runs on CPU over gloo, so this script switches
accelerate's state to FSDP right after accelerate's own set-up, with the plugin the launch's FSDP settings
describe; from there the trainer runs as it does on GPUs.

The process ends with ``os._exit`` once the run is over and its output flushed. ``destroy_process_group`` (the
trainer's last call) does not free a process group that FSDP's device mesh uses: torch's mesh registry keeps it,
so gloo's worker threads are still running when the interpreter tears down, and now and then one of them aborts
the process there (SIGABRT, "terminate called without an active exception") after the run has succeeded.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.state import PartialState
from accelerate.utils import DistributedType

from thematrix.cli import run

accelerate_setup = Accelerator.__init__


def setup_with_fsdp(self, *args, **kwargs) -> None:
    accelerate_setup(self, *args, **kwargs)
    PartialState().distributed_type = self.state.distributed_type = DistributedType.FSDP
    self.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables the launch sets


if __name__ == "__main__":
    Accelerator.__init__ = setup_with_fsdp
    stage = importlib.import_module(sys.argv[1])
    try:
        run(lambda: stage.main(sys.argv[2:]))
        exit_code = 0
    except SystemExit as stop:
        exit_code = stop.code or 0
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
