"""What each training mode refuses before a run trains, on stand-ins for accelerate's state: FSDP and DeepSpeed
themselves need GPUs (tests/test_sharded_training.py runs FSDP in CPU processes)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from stage1.training.arguments import LoraArgs
from thematrix.config import ConfigError
from thematrix.training.checkpoint import NUM_PROCESSES, TRAINER_STATE, TRAINING_MODE, Checkpoints
from thematrix.training.sharding import (
    FSDP_VERSION,
    ZERO_STAGE,
    TrainingMode,
    check_model_for_mode,
    configure_training_mode,
)


def accelerator(distributed_type, num_processes=2, **state):
    """accelerate's Accelerator as far as the checks read it."""
    return SimpleNamespace(
        distributed_type=distributed_type,
        mixed_precision="bf16",
        num_processes=num_processes,
        state=SimpleNamespace(**state),
        register_save_state_pre_hook=lambda hook: None,
        register_load_state_pre_hook=lambda hook: None,
    )


def deepspeed(zero_stage=ZERO_STAGE, **config):
    plugin = SimpleNamespace(zero_stage=zero_stage, deepspeed_config={"gradient_clipping": 1.0, **config})
    return accelerator(DistributedType.DEEPSPEED, deepspeed_plugin=plugin)


@pytest.mark.parametrize(
    ("launched", "settings", "message"),
    [
        (lambda: deepspeed(zero_stage=3), {}, "zero_stage: 3.*set zero_stage: 2"),
        (lambda: deepspeed(gradient_clipping=0.5), {}, "clips gradients at 0.5.*max_grad_norm is 1.0"),
        (lambda: deepspeed(), {"max_nonfinite_steps": 2}, "args.max_nonfinite_steps = 2: DeepSpeed"),
        (
            lambda: accelerator(DistributedType.FSDP, fsdp_plugin=SimpleNamespace(fsdp_version=1)),
            {},
            f"fsdp_version: 1.*set fsdp_version: {FSDP_VERSION}",
        ),
    ],
)
def test_an_unsupported_configuration_is_refused_naming_the_setting(launched, settings, message):
    args = LoraArgs()
    for name, value in settings.items():
        setattr(args, name, value)
    with pytest.raises(ConfigError, match=message):
        configure_training_mode(launched(), args)


def test_deepspeed_gets_the_per_process_batch_and_clipping_and_fsdp_averages_gradients_in_float32():
    args = LoraArgs()
    args.train_batch_size = 3
    launched = deepspeed()
    configure_training_mode(launched, args)
    assert launched.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == 3
    unset = deepspeed(gradient_clipping="auto")
    configure_training_mode(unset, args)
    assert unset.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] == args.max_grad_norm
    plugin = SimpleNamespace(fsdp_version=FSDP_VERSION, mixed_precision_policy=None)
    configure_training_mode(accelerator(DistributedType.FSDP, fsdp_plugin=plugin), args)
    policy = plugin.mixed_precision_policy
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32


def test_fsdp_refuses_a_model_with_frozen_weights_and_data_parallel_takes_it():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    with pytest.raises(ConfigError, match="keeps 2 weights frozen.*ACCELERATE_CONFIG=deepspeed_zero2"):
        check_model_for_mode(accelerator(DistributedType.FSDP), model)
    check_model_for_mode(accelerator(DistributedType.MULTI_GPU), model)


def test_zero2_checkpoints_resume_on_their_process_count_only(tmp_path):
    (tmp_path / TRAINER_STATE).write_text(json.dumps({TRAINING_MODE: TrainingMode.DEEPSPEED.value, NUM_PROCESSES: 2}))
    Checkpoints(deepspeed(), tmp_path, LoraArgs()).check_mode(tmp_path)
    fewer = deepspeed()
    fewer.num_processes = 1
    with pytest.raises(ConfigError, match="ZeRO-2 on 2 processes, this run has 1.*NUM_PROCESSES=2"):
        Checkpoints(fewer, tmp_path, LoraArgs()).check_mode(tmp_path)
    with pytest.raises(ConfigError, match="written under DeepSpeed ZeRO-2.*ACCELERATE_CONFIG=deepspeed_zero2"):
        Checkpoints(accelerator(DistributedType.MULTI_GPU), tmp_path, LoraArgs()).check_mode(tmp_path)
