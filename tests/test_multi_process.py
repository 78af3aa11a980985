"""Stage 1 through `bash stage1/train_text_to_video_lora.sh` with two CPU processes (gloo), stopped by SIGTERM.

Two processes with batches of one see the clips and draw the noise that one process with batches of
two does, so their LoRA weights agree to float rounding. SIGTERM to the launcher reaches both processes,
which save a checkpoint at the same step boundary and exit with code 75; that checkpoint resumes in one
process where the LR schedule (warm-up, then cosine) stood, and ends where the one-process run ends. Resumed in
one process with the same settings, half the samples a step, it keeps the schedule and continues the data after
the samples the two processes drew; shuffled too, where the order of an epoch's samples is the same whatever the
batch size.
"""

from __future__ import annotations

import logging
import signal

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from diffusers import CogVideoXTransformer3DModel
from safetensors.torch import load_file

from stage1.train_text_to_video_lora import LoraTrainer
from stage1.training.arguments import LoraArgs
from tests.conftest import ADAM_ROUNDING_STEPS, NUM_CLIPS, TEST_VOCABULARY, tiny_run_args
from tests.launching import REPO_ROOT, finish, launch_stage1, wait_for_steps, write_config
from tests.test_checkpoints import DrawRecorder
from thematrix.model_dir import LORA_WEIGHT_NAME
from thematrix.models import InteractiveCogVideoXTransformer3DModel
from thematrix.presets import TINY
from thematrix.training.arguments import TrainingArgs
from thematrix.training.checkpoint import (
    TRAINABLE_WEIGHTS,
    checkpoint_step,
    list_checkpoints,
)
from thematrix.training.metrics import METRICS_FILE, read_records
from thematrix.training.run_safety import PREEMPTED_EXIT_CODE
from thematrix.training.sharding import FSDP_VERSION, ZERO_STAGE

CONFIG_DIR = REPO_ROOT / "thematrix" / "accelerate_configs"
NUM_PROCESSES = 2
STEPS = 12
LEARNING_RATE = 1e-2
# Micro-batches per optimizer step: steps long enough for the signal to land long before the last one.
ACCUMULATION = 8
# Unshuffled, 4 clips: each step trains on all of them twice; warm-up then cosine decay over the run.
SCHEDULE = dict(lr_scheduler="cosine", lr_warmup_steps=3, shuffle=False, gradient_accumulation_steps=ACCUMULATION)


def run_args(model_dir, dataset, output_dir, cache_dir, **overrides) -> LoraArgs:
    return tiny_run_args(
        LoraArgs(),
        model_dir,
        dataset,
        output_dir,
        **{
            "rank": 4,
            "lora_alpha": 4.0,
            "learning_rate": LEARNING_RATE,
            "max_train_steps": STEPS,
            "cache_dir": str(cache_dir),
            **SCHEDULE,
            **overrides,
        },
    )


def assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(
            actual[name], expected[name], atol=ADAM_ROUNDING_STEPS * LEARNING_RATE, rtol=0, msg=name
        )


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tiny_dataset, tmp_path_factory):
    """(two-process output dir, its exit code and output, one-process output dir with a checkpoint at every step)."""
    root = tmp_path_factory.mktemp("multi_process")
    cache_dir = root / "cache"
    one = root / "one_process"
    LoraTrainer(
        run_args(
            tiny_model_dir,
            tiny_dataset,
            one,
            cache_dir,
            train_batch_size=2,
            checkpointing_steps=1,
            checkpoints_total_limit=None,
        )
    ).train()

    two, log = root / "two_processes", root / "two_processes.log"
    config = write_config(
        run_args(tiny_model_dir, tiny_dataset, two, cache_dir, train_batch_size=1, checkpointing_steps=100),
        root / "config.py",
    )
    process = launch_stage1(config, log, NUM_PROCESSES)
    # Two steps: a signal right after step 1 stops there, and step 1 of the warm-up trains at learning rate 0.
    wait_for_steps(two, 2, process, log)
    process.send_signal(signal.SIGTERM)  # to the launcher alone, as `kill PID` or a container runtime sends it
    code, output = finish(process, log)
    return two, code, output, one


def stopped_checkpoint(runs):
    two, code, output, _ = runs
    assert code == PREEMPTED_EXIT_CODE, output[-4000:]
    (checkpoint,) = list_checkpoints(two / "checkpoints")
    return checkpoint


def test_sigterm_stops_both_processes_at_one_step_boundary_with_a_checkpoint(runs):
    _, _, output, _ = runs
    checkpoint = stopped_checkpoint(runs)
    assert 1 <= checkpoint_step(checkpoint) < STEPS
    assert f"{NUM_PROCESSES * ACCUMULATION} samples per optimizer step" in output
    assert output.strip().splitlines()[-1].startswith("stopped: SIGTERM at step"), output[
        -4000:
    ]  # no launcher noise after it


def test_two_processes_of_batch_one_equal_one_process_of_batch_two(runs):
    checkpoint = stopped_checkpoint(runs)
    *_, one = runs
    expected = load_file(str(one / "checkpoints" / checkpoint.name / TRAINABLE_WEIGHTS))
    assert any(value.abs().max() > 0 for name, value in expected.items() if "lora_B" in name)  # training moved B
    assert_same_weights(expected, load_file(str(checkpoint / TRAINABLE_WEIGHTS)))


def resumed_in_one_process(runs, model_dir, dataset, trainer_class, name: str, batch_size: int, **overrides):
    """The two-process run's checkpoint resumed in one process with batches of ``batch_size`` (and ``overrides``):
    (checkpoint, the resumed trainer, the one-process run's folder), the trainer checked to end where the one-process
    run ended, on its learning rates."""
    checkpoint = stopped_checkpoint(runs)
    *_, one = runs
    resumed = trainer_class(
        run_args(
            model_dir,
            dataset,
            checkpoint.parents[2] / name,
            one.parent / "cache",
            train_batch_size=batch_size,
            resume_from_checkpoint=str(checkpoint),
            **overrides,
        )
    )
    resumed.train()
    stopped_at = checkpoint_step(checkpoint)
    assert resumed.global_step == STEPS and len(resumed.history) == STEPS - stopped_at
    one_process_lrs = [record["lr"] for record in read_records(one / METRICS_FILE) if record["step"] > stopped_at]
    assert [entry["lr"] for entry in resumed.history] == one_process_lrs
    return checkpoint, resumed, one


def test_two_process_checkpoint_resumes_in_one_process_on_the_same_lr_schedule(runs, tiny_model_dir, tiny_dataset):
    checkpoint, resumed, one = resumed_in_one_process(runs, tiny_model_dir, tiny_dataset, LoraTrainer, "resumed", 2)
    stopped_at = checkpoint_step(checkpoint)
    one_process_lrs = [record["lr"] for record in read_records(one / METRICS_FILE) if record["step"] > stopped_at]
    assert len(set(one_process_lrs)) > 1  # the schedule moves over the resumed steps
    assert_same_weights(
        load_file(str(one / LORA_WEIGHT_NAME)), load_file(str(checkpoint.parents[2] / "resumed" / LORA_WEIGHT_NAME))
    )


def test_two_process_checkpoint_resumes_in_one_process_of_the_same_settings_after_the_samples_drawn(
    runs, tiny_model_dir, tiny_dataset, caplog
):
    """Batches of one in one process: 8 samples a step where the two processes drew 16. The schedule counts optimizer
    steps; the data goes on from the samples drawn, unshuffled: sample n is clip n mod 4."""
    caplog.set_level(logging.INFO, logger="thematrix")
    checkpoint, resumed, _ = resumed_in_one_process(
        runs, tiny_model_dir, tiny_dataset, DrawRecorder, "resumed_same_settings", 1
    )
    stopped_at = checkpoint_step(checkpoint)
    assert f"{NUM_PROCESSES * ACCUMULATION} samples per optimizer step there" in caplog.text
    drawn = stopped_at * NUM_PROCESSES * ACCUMULATION
    positions = [position for position, _ in resumed.draws]
    assert positions == list(range(drawn, drawn + (STEPS - stopped_at) * ACCUMULATION))
    assert all(caption.endswith(f"clip {position % NUM_CLIPS}.") for position, caption in resumed.draws)


def test_shuffled_data_resumes_in_one_process_with_the_samples_the_uninterrupted_run_draws(
    runs, tiny_model_dir, tiny_dataset
):
    """Shuffled, the two processes' checkpoint resumed in one process with batches of one draws, sample for sample, what
    one process with batches of two (the two processes' samples per step) draws after that step: an epoch's order is
    one sequence of samples, whatever the batch size. The checkpoint's run was unshuffled; its data position, all that
    the resumed order takes from it, is the same shuffled or not."""
    *_, one = runs
    uninterrupted = DrawRecorder(
        run_args(
            tiny_model_dir,
            tiny_dataset,
            one.parent / "shuffled",
            one.parent / "cache",
            train_batch_size=2,
            shuffle=True,
        )
    )
    uninterrupted.train()
    # Shuffled: not the unshuffled order, where sample n is clip n mod 4.
    assert any(not caption.endswith(f"clip {position % NUM_CLIPS}.") for position, caption in uninterrupted.draws)
    checkpoint, resumed, _ = resumed_in_one_process(
        runs, tiny_model_dir, tiny_dataset, DrawRecorder, "resumed_shuffled", 1, shuffle=True
    )
    stopped_at = checkpoint_step(checkpoint)
    drawn = stopped_at * NUM_PROCESSES * ACCUMULATION
    end = drawn + (STEPS - stopped_at) * ACCUMULATION
    assert resumed.draws == [
        (position, caption) for position, caption in uninterrupted.draws if drawn <= position < end
    ]


def test_the_sharded_configs_agree_with_the_trainer_and_with_every_stages_model():
    """The trainer runs FSDP version 2 and ZeRO stage 2 (thematrix/training/sharding.py). DeepSpeed clips gradients
    inside its own step, so its clipping must be the trainer's max_grad_norm. FSDP
    wraps each class of the model's _no_split_modules (the config names none) and accelerate refuses a listed
    class the model lacks: every stage's transformer has each class it lists."""
    deepspeed = load_config_from_file(str(CONFIG_DIR / "deepspeed_zero2.yaml"))
    assert deepspeed.distributed_type == DistributedType.DEEPSPEED and deepspeed.mixed_precision == "bf16"
    assert deepspeed.deepspeed_config["gradient_clipping"] == TrainingArgs().max_grad_norm
    fsdp = load_config_from_file(str(CONFIG_DIR / "fsdp.yaml"))
    assert fsdp.distributed_type == DistributedType.FSDP and fsdp.mixed_precision == "bf16"
    assert fsdp.fsdp_config["fsdp_version"] == FSDP_VERSION and deepspeed.deepspeed_config["zero_stage"] == ZERO_STAGE
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp.fsdp_config
    vocabulary = dict(control_tokens=TEST_VOCABULARY.tokens, control_phrases=TEST_VOCABULARY.phrases)
    for model in (
        CogVideoXTransformer3DModel(**TINY["transformer"]),
        InteractiveCogVideoXTransformer3DModel(**TINY["transformer"], **vocabulary),
    ):
        assert set(model._no_split_modules) <= {type(module).__name__ for module in model.modules()}, type(model)
