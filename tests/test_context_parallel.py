"""Context parallelism (thematrix/parallel.py) in two CPU processes over gloo, launched by torchrun: the tiny stage-3
transformer's forward (eager and with compiled blocks, on even and uneven splits) and a short stream split over both
equal the single-process ones, plain, overlapped, and on frames whose tokens split unevenly (diffusers'
ulysses_anything); rank 0 alone encodes, decodes and yields the frames, the other rank runs the same forwards without
its VAE. Wrong splits or gathers (a frame's modulation on another frame's tokens, text keys counted twice, patches
gathered out of order) change the output by far more than the tolerance."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from stage3 import inference
from stage3.cogvideox.pipeline_cogvideox import SwinDPMPipeline
from tests.launching import LAUNCH_TIMEOUT_S, REPO_ROOT
from thematrix.acceleration import compile_blocks
from thematrix.config import ConfigError
from thematrix.parallel import check_context_parallel, check_decode_device_outside_group, enable_context_parallel

NUM_PROCESSES = 2
# Ulysses attention sums each query's keys in another order ([text_0; video_0; text_1; video_1]): float32 rounding,
# 2.4e-7 at most on the forward, 5e-6 on the frames after 3 groups of steps and the decoder.
CONTEXT_PARALLEL_TOLERANCE = dict(atol=1e-4, rtol=1e-4)
# What the single-process stream runs through the VAE: one encode, the priming batch and 3 groups.
STREAM_VAE_CALLS = {"encode": 1, "decode": 4}


def test_context_parallel_forward_and_stream_equal_one_process(model_dir, tmp_path):
    prefix = tmp_path / "rank"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NUM_PROCESSES}"]
    command += [str(REPO_ROOT / "tests" / "context_parallel_worker.py"), str(model_dir), str(prefix)]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]

    main, *others = [torch.load(f"{prefix}{rank}.pt") for rank in range(NUM_PROCESSES)]
    # Compiled blocks (aot_eager: the graphs without a C++ toolchain) under context parallelism: the same forward.
    torch.testing.assert_close(main["compiled"]["forward"], main["single"]["forward"], **CONTEXT_PARALLEL_TOLERANCE)
    # Compiled on an uneven split: the attention's graph break (ulysses_anything's all-to-alls run eagerly).
    uneven, single_square = main["compiled_uneven"]["forward"], main["single_uneven"]["forward_square"]
    torch.testing.assert_close(uneven, single_square, **CONTEXT_PARALLEL_TOLERANCE)
    assert main["single"]["vae_calls"] == STREAM_VAE_CALLS
    runs = {"parallel": "single", "parallel_overlapped": "single", "parallel_uneven": "single_uneven"}
    for run, reference in runs.items():
        for name in ("forward", "frames", "latents"):
            parallel, single = main[run][name], main[reference][name]
            assert not torch.equal(parallel, torch.zeros_like(parallel))
            torch.testing.assert_close(parallel, single, **CONTEXT_PARALLEL_TOLERANCE)
        # Rank 0 encodes and decodes what one process does; the others hold no VAE, run no VAE and yield nothing.
        assert main[run]["vae_calls"] == STREAM_VAE_CALLS
        for other in others:
            assert other[run]["vae_calls"] == {} and "frames" not in other[run]
            assert torch.equal(other[run]["forward"], main[run]["forward"])


@pytest.mark.parametrize(
    "degree, frame_tokens, splits_evenly",
    [(2, 1350, True), (3, 1350, False), (4, 1350, False), (2, 1351, False), (8, 1350, False)],
)
def test_uneven_splits_take_ulysses_anything(monkeypatch, degree, frame_tokens, splits_evenly):
    monkeypatch.setenv("WORLD_SIZE", str(degree))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: degree)
    counts = dict(heads=30, text_tokens=226, frame_tokens=frame_tokens)
    assert check_context_parallel(degree, window="480x720", **counts) is splits_evenly


@pytest.mark.parametrize(
    "degree, counts, message",
    [
        (7, dict(heads=30, text_tokens=226, frame_tokens=1350), "30 attention heads on 7 ranks need 5 padding heads"),
        (9, dict(heads=30, text_tokens=226, frame_tokens=1350), "pass one of \\[2, 3, 4, 5, 6, 8, 10, 15, 30\\]"),
        (4, dict(heads=30, text_tokens=226, frame_tokens=3), "3 tokens of each latent frame \\(480x720"),
        (1, dict(heads=30, text_tokens=226, frame_tokens=1350), "at least 2 processes"),
    ],
)
def test_splits_diffusers_cannot_take_are_refused_naming_the_window_and_n(degree, counts, message):
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
        (["--context_parallel", "3"], "2 attention heads on 3 ranks need 1 padding heads"),
    ],
)
def test_inference_checks_context_parallel_before_loading(model_dir, tmp_path, monkeypatch, options, message):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    arguments = ["--model_dir", str(model_dir), "--initial_video", str(tmp_path / "clip.mp4"), *options]
    with pytest.raises(ConfigError, match=message):
        inference.check_stream_options(inference.parse_args(arguments))


def test_context_parallel_after_compiled_blocks_is_refused(model_dir):
    """Blocks compiled first would keep the unsplit attention in their graphs (fullgraph on an uneven split fails
    only at the first forward): the order is checked when parallelism is enabled."""
    pipeline = SwinDPMPipeline.from_model_dir(model_dir)
    compile_blocks(pipeline.transformer)
    with pytest.raises(ValueError, match="before compiling the transformer's blocks"):
        enable_context_parallel(pipeline.transformer, NUM_PROCESSES)


@pytest.mark.parametrize("decode_device", ["cuda:0", "cuda:1"])
def test_a_decode_device_inside_the_group_is_refused_naming_both_flags(decode_device):
    message = f"--decode_device {decode_device} with --context_parallel 2: .* pass --decode_device cuda:2"
    with pytest.raises(ConfigError, match=message):
        check_decode_device_outside_group(2, torch.device(decode_device))
    check_decode_device_outside_group(2, torch.device("cuda:2"))
    check_decode_device_outside_group(2, torch.device("cpu"))


def test_inference_places_rank_0s_decoder_outside_the_group(model_dir, tmp_path, monkeypatch):
    """Rank 0 puts the VAE on --decode_device; another rank holds none (the process group stubbed: the launched
    test above runs the stream itself)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(inference, "init_context_parallel_process", lambda: torch.device("cpu"))
    monkeypatch.setattr(inference, "enable_context_parallel", lambda transformer, degree, splits_evenly: None)
    arguments = ["--model_dir", str(model_dir), "--initial_video", str(tmp_path / "clip.mp4")]
    args = inference.parse_args([*arguments, "--context_parallel", "2", "--decode_device", "cpu"])
    start = inference.check_stream_options(args)
    for rank, decodes in ((0, True), (1, False)):
        monkeypatch.setattr(inference, "is_main_process", lambda rank=rank: rank == 0)
        pipeline = inference.load_pipeline(args, start)
        assert pipeline.decodes is decodes and not pipeline.decodes_apart
