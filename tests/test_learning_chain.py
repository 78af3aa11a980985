"""learning/gpu/chain.sh: which steps it runs (CHAIN_STEPS), and common.sh's step timings, checked without training
anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_chain(work: Path, steps: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "LEARNING_WORK": str(work), "CHAIN_STEPS": steps, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", "learning/gpu/chain.sh"], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def test_the_chain_refuses_a_step_it_does_not_run(tmp_path):
    result = run_chain(tmp_path, "01 08")
    assert result.returncode == 2
    assert "not '08'" in result.stderr
    assert not (tmp_path / "logs" / "01.log").exists()


def test_the_chain_runs_only_the_steps_named_and_stops_at_the_first_that_fails(tmp_path):
    # Step 11 alone, without step 4's checkpoints: the only step started, it fails at once and stops the chain.
    result = run_chain(tmp_path, "11")
    assert result.returncode == 1
    assert "step 11 started" in result.stdout
    assert "step 11 failed" in result.stderr
    assert sorted(path.name for path in (tmp_path / "logs").iterdir()) == ["11.log"]
    assert "step 4 leaves" in (tmp_path / "logs" / "11.log").read_text()


def test_a_rerun_that_skips_every_phase_keeps_the_timings_of_the_run_that_did_the_work(tmp_path):
    script = tmp_path / "99_step.sh"
    script.write_text(
        f'source "{REPO_ROOT}/learning/gpu/common.sh"\n'
        "step 99\n"
        'phase "make" done_or "$WORK/made" bash -c \'sleep 1; touch "$0"\' "$WORK/made"\n'
        "step_total\n"
    )
    timings = tmp_path / "results" / "timings_99.tsv"

    def run_step() -> list[list[str]]:
        environment = {**os.environ, "LEARNING_WORK": str(tmp_path), "PYTHON": sys.executable}
        subprocess.run(["bash", str(script)], env=environment, check=True, capture_output=True, timeout=60)
        return [line.split("\t") for line in timings.read_text().splitlines()]

    first = run_step()
    assert [(phase, int(seconds) >= 1) for _, phase, seconds in first] == [("make", True), ("total", True)]
    assert run_step() == first  # the made file was there: nothing ran, nothing measured
    (tmp_path / "made").unlink()
    assert [phase for _, phase, _ in run_step()] == ["make", "total"]
