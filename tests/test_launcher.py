"""Through the real bash launchers on the CPU, a failed run ends with its own last line and exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from thematrix.cli import USAGE_EXIT_CODE
from thematrix.launch import SIGNAL_EXIT_BASE, exit_code

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = REPO_ROOT / "thematrix" / "accelerate_launch.sh"
LAUNCH_TIMEOUT_S = 120
# What accelerate's and torchrun's own failure reports contain.
LAUNCHER_NOISE = ("Traceback", "ChildFailedError", "CalledProcessError", "exitcode", "Root Cause")


def launch(command: list[str], num_processes: int, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "NUM_PROCESSES": str(num_processes),
        "MAIN_PROCESS_PORT": "0",  # a free port: parallel test runs do not collide
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


@pytest.mark.parametrize("num_processes", [1, 2])
def test_a_bad_setting_through_the_stage_launcher_prints_one_error_line(num_processes):
    result = launch(["bash", "stage1/train_text_to_video_lora.sh", "--max_train_step", "3"], num_processes)
    assert result.returncode == USAGE_EXIT_CODE, result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == [
        "error: --max_train_step is not a setting of LoraArgs. Did you mean --max_train_steps?"
    ], result.stderr
    assert lines[-1].startswith("error:"), "nothing may follow the error line"
    assert not any(noise in result.stderr for noise in LAUNCHER_NOISE), result.stderr


def test_a_crash_of_one_rank_keeps_its_exit_code_and_gets_one_summary_line(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(
        "import os, sys, time\nif os.environ.get('RANK', '0') == '0':\n    raise SystemExit(3)\ntime.sleep(60)\n"
    )
    result = launch(["bash", str(LAUNCHER), str(script)], num_processes=2)
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines() == [
        "training failed: the process of rank 0 exited with code 3 (its output is above)"
    ], result.stderr


def test_exit_codes_are_the_shells():
    assert exit_code(0) == 0 and exit_code(USAGE_EXIT_CODE) == USAGE_EXIT_CODE
    assert exit_code(-signal.SIGTERM) == SIGNAL_EXIT_BASE + signal.SIGTERM
