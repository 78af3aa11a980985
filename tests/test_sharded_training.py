"""Stages 3 and 4 under FSDP (accelerate_configs/fsdp.yaml) in CPU processes over gloo, against data parallel.

Two FSDP processes of batch one train the weights one data-parallel process of batch two trains, to float
rounding, and validate; in stage 4 the float32 EMA target, updated from the gathered weights, agrees too.
Stage 3's sharded checkpoint (each process's shard, torch's distributed checkpoint) resumes in one FSDP process
and in two where the LR schedule (warm-up, then cosine) stood, and ends on the uninterrupted run's weights; a
launch under another mode is refused before it trains. accelerate runs FSDP on accelerators only, so
tests/fsdp_on_cpu.py turns it on for the CPU processes (see there).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stage3.train_text_to_video_sft import SwinTrainer
from stage3.training.arguments import SwinArgs
from stage4.train_text_to_video_scm import ScmTrainer
from stage4.training.arguments import ScmArgs
from tests.conftest import ADAM_ROUNDING_STEPS, CLIP_FRAMES, tiny_run_args
from tests.launching import finish, launch_fsdp_on_cpu, write_config
from thematrix.config import ConfigError
from thematrix.training.checkpoint import (
    NUM_PROCESSES,
    TRAINABLE_WEIGHTS,
    TRAINER_STATE,
    TRAINING_MODE,
    list_checkpoints,
)
from thematrix.training.metrics import METRICS_FILE, read_records
from thematrix.training.sharding import TrainingMode

STAGE3 = "stage3.train_text_to_video_sft"
STAGE4 = "stage4.train_text_to_video_scm"
EMA_CHECKPOINT = "custom_checkpoint_0.pkl"  # accelerate's file for the first object registered for checkpointing
TEACHER_STEPS = 8  # the stage-4 teacher's grid: 4 steps per phase of the tiny window
STEPS = 4
RESUME_FROM = 2
LEARNING_RATE = 1e-3
SAMPLES_PER_STEP = 2
# The tiny window: 2 history + 1 + 2 x 2 latent frames = the 25-frame test clips. Unshuffled, warm-up then cosine.
SETTINGS = dict(
    num_noise_groups=2,
    group_size=2,
    frame_buckets=(CLIP_FRAMES,),
    max_train_steps=STEPS,
    learning_rate=LEARNING_RATE,
    lr_scheduler="cosine",
    lr_warmup_steps=1,
    shuffle=False,
    checkpointing_steps=RESUME_FROM,
    checkpoints_total_limit=None,
)
# Attention ignores a shift shared by every key of a query: the key norm's bias gets no gradient but rounding noise.
GRADIENT_FREE_WEIGHTS = "norm_k.bias"
FINAL_WEIGHTS = "model/transformer/diffusion_pytorch_model.safetensors"


def stage3_args(tiny_model_dir, tiny_dataset, output_dir, cache_dir, num_processes, **overrides) -> SwinArgs:
    batch = SAMPLES_PER_STEP // num_processes
    settings = {**SETTINGS, "cache_dir": str(cache_dir), "train_batch_size": batch, **overrides}
    return tiny_run_args(SwinArgs(), tiny_model_dir, tiny_dataset, output_dir, **settings)


def assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    """Equal to rounding (conftest's ADAM_ROUNDING_STEPS); the key norms' biases, whose gradient is rounding
    noise alone, within the STEPS Adam steps of at most the learning rate each that noise can make."""
    assert expected.keys() == actual.keys()
    for name in expected:
        steps = STEPS if name.endswith(GRADIENT_FREE_WEIGHTS) else ADAM_ROUNDING_STEPS
        torch.testing.assert_close(actual[name], expected[name], atol=steps * LEARNING_RATE, rtol=0, msg=name)


def train_under_fsdp(stage_module: str, args, num_processes: int) -> Path:
    """Launch ``stage_module`` on ``args`` in ``num_processes`` FSDP CPU processes; returns its output directory."""
    output_dir = Path(args.output_dir)
    config = write_config(args, output_dir.with_suffix(".py"))
    log = output_dir.with_suffix(".log")
    code, output = finish(launch_fsdp_on_cpu(stage_module, config, log, num_processes), log)
    assert code == 0, output[-4000:]
    return output_dir


def learning_rates(output_dir, after_step: int = 0) -> list[float]:
    records = read_records(output_dir / METRICS_FILE)
    return [record["lr"] for record in records if "lr" in record and record["step"] > after_step]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tiny_dataset, tmp_path_factory):
    """Output directories: data parallel in this process, FSDP on two processes, and the FSDP checkpoint of step
    RESUME_FROM resumed on one FSDP process and on two."""
    root = tmp_path_factory.mktemp("sharded")
    cache_dir = root / "cache"

    def args(name, num_processes, **overrides):
        return stage3_args(tiny_model_dir, tiny_dataset, root / name, cache_dir, num_processes, **overrides)

    SwinTrainer(args("data_parallel", 1)).train()

    def fsdp(name, num_processes, **overrides):
        return train_under_fsdp(STAGE3, args(name, num_processes, **overrides), num_processes)

    # Validation at the last step: every FSDP process generates (each forward gathers the weights), one writes.
    two = fsdp("fsdp_two", 2, validation_steps=STEPS, validation_num_inference_steps=2, validation_groups=2)
    checkpoint = str(two / "checkpoints" / f"checkpoint-{RESUME_FROM}")
    one_resumed = fsdp("fsdp_one_resumed", 1, resume_from_checkpoint=checkpoint)
    two_resumed = fsdp("fsdp_two_resumed", 2, resume_from_checkpoint=checkpoint)
    return {"data_parallel": root / "data_parallel", "two": two, "one_resumed": one_resumed, "two_resumed": two_resumed}


def test_two_fsdp_processes_train_the_weights_of_one_data_parallel_process(runs):
    expected = load_file(str(runs["data_parallel"] / FINAL_WEIGHTS))
    actual = load_file(str(runs["two"] / FINAL_WEIGHTS))
    assert_same_weights(expected, actual)
    for written in ("model/model_index.json", "model/transformer/config.json"):  # the model's class, not FSDP's
        assert (runs["two"] / written).read_text() == (runs["data_parallel"] / written).read_text()
    assert learning_rates(runs["two"]) == learning_rates(runs["data_parallel"])
    gradient_norms = [
        [record["grad_norm"] for record in read_records(runs[run] / METRICS_FILE) if "grad_norm" in record]
        for run in ("data_parallel", "two")
    ]
    torch.testing.assert_close(*map(torch.tensor, gradient_norms))  # the gathered norm of the whole gradient


def test_fsdp_validation_writes_its_videos(runs):
    videos = list((runs["two"] / "validation" / f"step-{STEPS}").glob("*.mp4"))
    assert videos and all(video.stat().st_size for video in videos)
    assert [record for record in read_records(runs["two"] / METRICS_FILE) if "validation_loss" in record]


def test_fsdp_checkpoints_hold_each_process_shard_and_the_mode(runs):
    for checkpoint in list_checkpoints(runs["two"] / "checkpoints"):
        assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and (checkpoint / "optimizer_0").is_dir()
        assert not (checkpoint / TRAINABLE_WEIGHTS).exists()
        state = json.loads((checkpoint / TRAINER_STATE).read_text())
        assert state[TRAINING_MODE] == TrainingMode.FSDP.value and state[NUM_PROCESSES] == 2


@pytest.mark.parametrize("resumed", ["one_resumed", "two_resumed"])
def test_the_sharded_checkpoint_resumes_on_any_process_count_on_the_same_schedule_and_weights(runs, resumed):
    assert learning_rates(runs[resumed]) == learning_rates(runs["two"], after_step=RESUME_FROM)
    assert len(set(learning_rates(runs["two"], after_step=RESUME_FROM))) > 1  # the schedule moves over them
    assert_same_weights(load_file(str(runs["two"] / FINAL_WEIGHTS)), load_file(str(runs[resumed] / FINAL_WEIGHTS)))


def test_a_checkpoint_of_another_mode_is_refused_naming_the_launch_setting(runs, tiny_model_dir, tiny_dataset):
    checkpoint = runs["two"] / "checkpoints" / f"checkpoint-{RESUME_FROM}"
    trainer = SwinTrainer(
        stage3_args(
            tiny_model_dir,
            tiny_dataset,
            runs["two"].parent / "refused",
            runs["two"].parent / "cache",
            1,
            resume_from_checkpoint=str(checkpoint),
        )
    )
    with pytest.raises(ConfigError, match="written under FSDP.*ACCELERATE_CONFIG=fsdp"):
        trainer.train()


@pytest.fixture(scope="module")
def distillations(model_dir, tiny_dataset, tmp_path_factory):
    """(data parallel, FSDP on two processes) output directories of stage 4 distilling the stage-3 test model."""
    root = tmp_path_factory.mktemp("sharded_distillation")

    def args(name, num_processes):
        settings = dict(
            SETTINGS,
            cache_dir=str(root / "cache"),
            train_batch_size=SAMPLES_PER_STEP // num_processes,
            teacher_num_inference_steps=TEACHER_STEPS,
            validation_num_inference_steps=SETTINGS["num_noise_groups"],
        )
        return tiny_run_args(ScmArgs(), model_dir, tiny_dataset, root / name, **settings)

    ScmTrainer(args("data_parallel", 1)).train()
    return root / "data_parallel", train_under_fsdp(STAGE4, args("fsdp_two", 2), 2)


def test_two_fsdp_processes_distil_the_student_and_ema_target_of_one_data_parallel_process(distillations):
    data_parallel, fsdp = distillations
    assert_same_weights(load_file(str(data_parallel / FINAL_WEIGHTS)), load_file(str(fsdp / FINAL_WEIGHTS)))
    checkpoint = f"checkpoints/checkpoint-{STEPS}/{EMA_CHECKPOINT}"
    expected, actual = (torch.load(run / checkpoint) for run in (data_parallel, fsdp))
    assert all(value.dtype == torch.float32 for value in actual.values())
    assert_same_weights(expected, actual)
