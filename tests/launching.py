"""Running the stages as users do, through their bash launchers (`bash stage1/train_text_to_video_lora.sh`), from the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from thematrix.training.arguments import TrainingArgs
from thematrix.training.metrics import METRICS_FILE

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGE1_LAUNCHER = REPO_ROOT / "stage1" / "train_text_to_video_lora.sh"
LAUNCH_SCRIPT = REPO_ROOT / "thematrix" / "launch.py"  # python -m thematrix.launch, as accelerate_launch.sh runs it
FSDP_CONFIG = REPO_ROOT / "thematrix" / "accelerate_configs" / "fsdp.yaml"
LAUNCH_TIMEOUT_S = 180
POLL_INTERVAL_S = 0.05


def write_config(args: TrainingArgs, path: Path) -> Path:
    """``args`` (any stage's) as a config file like stage1/training/lora_config_tiny.py, for the launched processes."""
    settings = type(args)
    lines = [f"from {settings.__module__} import {settings.__name__}", f"args = {settings.__name__}()"]
    lines += [f"args.{name} = {value!r}" for name, value in args.to_dict().items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def launch(
    launcher: Path,
    arguments: list[str],
    log: Path,
    num_processes: int = 1,
    interpreter: str = "bash",
    **environment: str,
) -> subprocess.Popen:
    """Start a stage launcher (``bash stageN/train_*.sh ARGUMENTS``, or another ``interpreter``'s script) in a session
    of its own, one CPU thread per process, with ``environment`` added; its output goes to ``log``."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "NUM_PROCESSES": str(num_processes),
        "MAIN_PROCESS_PORT": "0",  # a free port: parallel test runs do not collide
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),
        **environment,
    }
    with log.open("w") as output:
        return subprocess.Popen(
            [interpreter, str(launcher), *arguments],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def launch_stage1(config: Path, log: Path, num_processes: int = 1) -> subprocess.Popen:
    """Start the stage-1 launcher on ``config``."""
    return launch(STAGE1_LAUNCHER, ["--config", str(config)], log, num_processes)


def launch_fsdp_on_cpu(stage_module: str, config: Path, log: Path, num_processes: int) -> subprocess.Popen:
    """Start ``stage_module``'s training on ``config`` under accelerate_configs/fsdp.yaml in ``num_processes`` CPU
    processes (tests/fsdp_on_cpu.py), through the launcher the stage launchers call."""
    launch_flags = [
        "--config_file",
        str(FSDP_CONFIG),
        "--mixed_precision",
        "no",  # the trainer's args.mixed_precision decides, as accelerate_launch.sh has it
        "--num_processes",
        str(num_processes),
        "--main_process_port",
        "0",
        str(REPO_ROOT / "tests" / "fsdp_on_cpu.py"),
    ]
    arguments = [*launch_flags, stage_module, "--config", str(config)]
    return launch(LAUNCH_SCRIPT, arguments, log, interpreter=sys.executable, ACCELERATE_USE_CPU="true")


def finish(process: subprocess.Popen, log: Path) -> tuple[int, str]:
    """(exit code, output) of a launched run, once it ends."""
    process.wait(timeout=LAUNCH_TIMEOUT_S)
    return process.returncode, log.read_text()


def wait_for_steps(output_dir: Path, steps: int, process: subprocess.Popen, log: Path) -> None:
    """Return once the run has logged ``steps`` optimizer steps; fail if it ends first."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    metrics = output_dir / METRICS_FILE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"the run ended (code {process.returncode}) before step {steps}:\n{log.read_text()[-4000:]}"
            )
        if metrics.is_file():
            complete_lines = metrics.read_text().split("\n")[:-1]  # the last may be half written
            logged = [json.loads(line) for line in complete_lines if line]
            if sum("loss" in record for record in logged) >= steps:
                return
        time.sleep(POLL_INTERVAL_S)
    raise AssertionError(f"no step {steps} within {LAUNCH_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
