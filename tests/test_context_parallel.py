"""Context parallelism (thematrix/parallel.py) in two CPU processes over gloo, launched by torchrun: the tiny stage-3
transformer's forward (eager and with compiled blocks) and a short stream split over both equal the single-process ones, and every rank holds the
same result. Wrong splits or gathers (a frame's modulation on another frame's tokens, text keys counted twice, patches
gathered out of order) change the output by far more than the tolerance."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from stage3 import inference
from tests.launching import LAUNCH_TIMEOUT_S, REPO_ROOT
from thematrix.config import ConfigError
from thematrix.parallel import check_context_parallel

NUM_PROCESSES = 2
# Ulysses attention sums each query's keys in another order ([text_0; video_0; text_1; video_1]): float32 rounding,
# 2.4e-7 at most on the forward, 5e-6 on the frames after 3 groups of steps and the decoder.
CONTEXT_PARALLEL_TOLERANCE = dict(atol=1e-4, rtol=1e-4)


def test_context_parallel_forward_and_stream_equal_one_process(model_dir, tmp_path):
    prefix = tmp_path / "rank"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NUM_PROCESSES}"]
    command += [str(REPO_ROOT / "tests" / "context_parallel_worker.py"), str(model_dir), str(prefix)]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]

    ranks = [torch.load(f"{prefix}{rank}.pt") for rank in range(NUM_PROCESSES)]
    # Compiled blocks (aot_eager: the graphs without a C++ toolchain) under context parallelism: the same forward.
    torch.testing.assert_close(
        ranks[0]["compiled"]["forward"], ranks[0]["single"]["forward"], **CONTEXT_PARALLEL_TOLERANCE
    )
    for name, single in ranks[0]["single"].items():
        parallel = ranks[0]["parallel"][name]
        assert not torch.equal(parallel, torch.zeros_like(parallel))
        torch.testing.assert_close(parallel, single, **CONTEXT_PARALLEL_TOLERANCE)
        for other in ranks[1:]:
            assert torch.equal(other["parallel"][name], parallel)


@pytest.mark.parametrize(
    "degree, counts, message",
    [
        (4, dict(heads=30, text_tokens=226, frame_tokens=1350), "30 attention heads and 226 text tokens and 1350"),
        (2, dict(heads=30, text_tokens=226, frame_tokens=1351), "1351 tokens of each latent frame \\(480x720"),
        (1, dict(heads=30, text_tokens=226, frame_tokens=1350), "at least 2 processes"),
    ],
)
def test_uneven_splits_are_refused_naming_the_window_and_n(degree, counts, message):
    with pytest.raises(ConfigError, match=f"--context_parallel {degree}: .*{message}"):
        check_context_parallel(degree, window="480x720 frames in patches of 16x16 pixels", **counts)


def test_context_parallel_needs_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="launch it with torchrun --nproc_per_node 2"):
        check_context_parallel(2, heads=30, text_tokens=226, frame_tokens=1350, window="480x720")


@pytest.mark.parametrize(
    "options, message",
    [
        (["--context_parallel", "2"], "launch it with torchrun --nproc_per_node 2"),
        (["--context_parallel", "2", "--decode_device", "cpu"], "--decode_device with --context_parallel"),
        (["--context_parallel", "3"], "2 attention heads and 226 text tokens do not divide by 3"),
    ],
)
def test_inference_checks_context_parallel_before_loading(model_dir, tmp_path, monkeypatch, options, message):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    arguments = ["--model_dir", str(model_dir), "--initial_video", str(tmp_path / "clip.mp4"), *options]
    with pytest.raises(ConfigError, match=message):
        inference.check_stream_options(inference.parse_args(arguments))
