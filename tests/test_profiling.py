"""args.profile_steps: a run traces the steps after its warm-up and says where their time went."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from stage1.train_text_to_video_lora import LoraTrainer
from thematrix.config import ConfigError
from thematrix.profiling import work_kind
from thematrix.training.arguments import PROFILE_WARMUP_STEPS

TRACED_STEPS = 2


def test_a_run_traces_the_steps_after_its_warm_up(lora_args):
    args = lora_args(max_train_steps=PROFILE_WARMUP_STEPS + TRACED_STEPS + 1, profile_steps=TRACED_STEPS)
    LoraTrainer(args).train()
    summary = json.loads((Path(args.output_dir) / "profile.json").read_text())
    assert summary["steps"] == [PROFILE_WARMUP_STEPS + 1, PROFILE_WARMUP_STEPS + TRACED_STEPS]
    assert summary["device"] == "CPU"
    assert 0 < summary["device_busy_share"]
    assert summary["host_operator_calls_per_step"] > 0
    assert "matmul" in summary["device_s_by_kind"]  # the transformer's linear layers, on the CPU as aten operators
    assert summary["top"] and all(entry["calls"] > 0 for entry in summary["top"])
    most_called = summary["top_host_operators_per_step"]
    assert all(name.startswith("aten::") for name in most_called)
    assert list(most_called.values()) == sorted(most_called.values(), reverse=True)
    assert sum(most_called.values()) <= summary["host_operator_calls_per_step"]
    with gzip.open(Path(args.output_dir) / "profile_trace.json.gz") as trace:
        assert json.load(trace)["traceEvents"]


def test_a_trace_past_the_run_is_refused_at_start(lora_args):
    with pytest.raises(ConfigError, match="args.profile_steps = 3 traces steps 4 to 6 of a launch, past"):
        lora_args(max_train_steps=PROFILE_WARMUP_STEPS + 2, profile_steps=3).check()


@pytest.mark.parametrize(
    "name, kind",
    [
        ("sm90_xmma_gemm_bf16bf16_bf16f32", "matmul"),
        ("aten::addmm", "matmul"),
        ("flash_fwd_kernel", "attention"),
        ("implicit_gemm_conv3d", "convolution"),  # cuDNN's convolutions are GEMMs by name: convolution first
        ("Memcpy HtoD (Pageable -> Device)", "copy"),
        ("elementwise_kernel", "other"),
    ],
)
def test_kernels_are_sorted_by_the_work_their_names_say(name, kind):
    assert work_kind(name) == kind
