"""Stage 1 through `accelerate launch` with two CPU processes (gloo): it trains what one process does.

Two processes with batches of one see the clips and draw the noise that one process with batches of
two does, so their LoRA weights agree to float rounding; a checkpoint of the two-process run resumes
in one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from stage1.train_text_to_video_lora import LoraTrainer
from stage1.training.arguments import LoraArgs
from tests.conftest import ADAM_ROUNDING_STEPS, tiny_run_args
from thematrix.model_dir import LORA_WEIGHT_NAME
from thematrix.training.trainer import CHECKPOINT_PREFIX

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = REPO_ROOT / "thematrix" / "accelerate_launch.sh"
CONFIG_DIR = REPO_ROOT / "thematrix" / "accelerate_configs"
STAGE1_SCRIPT = REPO_ROOT / "stage1" / "train_text_to_video_lora.py"
NUM_PROCESSES = 2
STEPS = 2  # 4 clips, unshuffled: step 1 trains on clips 0, 1 and step 2 on clips 2, 3
RESUMED_STEPS = 4
LAUNCH_TIMEOUT_S = 180
LEARNING_RATE = 1e-2


def run_args(model_dir, dataset, output_dir, cache_dir, **overrides) -> LoraArgs:
    return tiny_run_args(
        LoraArgs(), model_dir, dataset, output_dir,
        **{"rank": 4, "lora_alpha": 4.0, "learning_rate": LEARNING_RATE, "shuffle": False, "max_train_steps": STEPS, "cache_dir": str(cache_dir), **overrides},
    )


def write_config(args: LoraArgs, path: Path) -> Path:
    """``args`` as a config file like stage1/training/lora_config_tiny.py, for the launched processes."""
    lines = ["from stage1.training.arguments import LoraArgs", "args = LoraArgs()"]
    lines += [f"args.{name} = {value!r}" for name, value in args.to_dict().items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def lora_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / LORA_WEIGHT_NAME))


def assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=ADAM_ROUNDING_STEPS * LEARNING_RATE, rtol=0, msg=name)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tiny_dataset, tmp_path_factory):
    """(two-process output dir, one-process output dir), STEPS steps each, two samples per step."""
    root = tmp_path_factory.mktemp("multi_process")
    cache_dir = root / "cache"
    one = root / "one_process"
    LoraTrainer(run_args(tiny_model_dir, tiny_dataset, one, cache_dir, train_batch_size=2)).train()

    two = root / "two_processes"
    config = write_config(run_args(tiny_model_dir, tiny_dataset, two, cache_dir, train_batch_size=1), root / "config.py")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "NUM_PROCESSES": str(NUM_PROCESSES),
        "MAIN_PROCESS_PORT": "0",  # a free port: parallel test runs do not collide
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    result = subprocess.run(
        ["bash", str(LAUNCHER), str(STAGE1_SCRIPT), "--config", str(config)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"{NUM_PROCESSES} samples per optimizer step" in result.stderr, result.stderr[-4000:]
    return two, one


def test_two_processes_of_batch_one_equal_one_process_of_batch_two(runs):
    two, one = runs
    expected = lora_weights(one)
    assert any(value.abs().max() > 0 for name, value in expected.items() if "lora_B" in name)  # training moved B
    assert_same_weights(expected, lora_weights(two))


def test_two_process_checkpoint_resumes_in_one_process(runs, tiny_model_dir, tiny_dataset):
    two, one = runs
    cache_dir = one.parent / "cache"
    checkpoint = two / "checkpoints" / f"{CHECKPOINT_PREFIX}{STEPS}"
    resumed = LoraTrainer(run_args(
        tiny_model_dir, tiny_dataset, two.parent / "resumed", cache_dir,
        train_batch_size=2, max_train_steps=RESUMED_STEPS, resume_from_checkpoint=str(checkpoint),
    ))
    resumed.train()
    assert resumed.global_step == RESUMED_STEPS and len(resumed.history) == RESUMED_STEPS - STEPS

    # The one-process run, resumed from its own checkpoint, takes the same two steps.
    continued = LoraTrainer(run_args(
        tiny_model_dir, tiny_dataset, one, cache_dir,
        train_batch_size=2, max_train_steps=RESUMED_STEPS, resume_from_checkpoint="latest",
    ))
    continued.train()
    assert_same_weights(lora_weights(one), lora_weights(two.parent / "resumed"))


@pytest.mark.parametrize("name, distributed_type", [("fsdp", DistributedType.FSDP), ("deepspeed_zero2", DistributedType.DEEPSPEED)])
def test_accelerate_configs_load(name, distributed_type):
    config = load_config_from_file(str(CONFIG_DIR / f"{name}.yaml"))
    assert config.distributed_type == distributed_type and config.mixed_precision == "bf16"
