"""Checkpoints on stage 1 and the tiny model: the last few kept, never at the cost of the newest complete one,
an output directory that holds another run's checkpoints refused with the settings that differ, and a resumed
run that continues its schedule and its data where they were."""

from __future__ import annotations

import logging

import pytest
import torch
from accelerate import Accelerator

from stage1.train_text_to_video_lora import LoraTrainer
from stage1.training.arguments import LoraArgs
from tests.conftest import TINY_RUN_STEPS
from thematrix.config import ConfigError
from thematrix.training.checkpoint import (
    OPTIMIZER_STATES_PER_WEIGHT,
    Checkpoints,
    checkpoint_step,
    list_checkpoints,
)
from thematrix.training.trainer import DataPosition


def checkpoint_steps(output_dir) -> list[int]:
    return [checkpoint_step(path) for path in list_checkpoints(output_dir / "checkpoints")]


class SaveFailsAtStep3(LoraTrainer):
    """Dies while writing checkpoint 3, as a full disk or a kill would make it."""

    def setup(self):
        super().setup()
        save_state = self.accelerator.save_state

        def failing_save_state(output_dir):
            if self.global_step == 3:
                raise OSError("No space left on device (simulated)")
            return save_state(output_dir)

        self.accelerator.save_state = failing_save_state


def test_only_the_last_checkpoints_are_kept(lora_args, tmp_path):
    LoraTrainer(lora_args(max_train_steps=4, checkpoints_total_limit=2)).train()
    assert checkpoint_steps(tmp_path / "run") == [3, 4]


def test_older_checkpoints_are_deleted_only_after_the_new_one_is_complete(lora_args, tmp_path):
    with pytest.raises(OSError, match="No space left"):
        SaveFailsAtStep3(lora_args(max_train_steps=4, checkpoints_total_limit=2)).train()
    assert checkpoint_steps(tmp_path / "run") == [1, 2]
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-3.partial").is_dir()
    resumed = LoraTrainer(lora_args(max_train_steps=4, checkpoints_total_limit=2))
    resumed.train()
    assert [entry["loss"] for entry in resumed.history] and checkpoint_steps(tmp_path / "run") == [3, 4]


def test_another_runs_checkpoints_are_refused_naming_the_settings_that_differ(lora_args):
    LoraTrainer(lora_args()).train()
    changed = lora_args(
        rank=8, lora_alpha=8.0, seed=1, max_train_steps=TINY_RUN_STEPS + 1, learning_rate=1e-3, validation_num_frames=9
    )
    with pytest.raises(ConfigError) as error:
        LoraTrainer(changed).train()
    message = str(error.value)
    for expected in (
        f"checkpoint-{TINY_RUN_STEPS}",
        "rank = 4 there, 8 here",
        "lora_alpha = 4.0 there, 8.0 here",
        "seed = 0 there, 1 here",
        "args.output_dir",
    ):
        assert expected in message, message
    for resumable in ("max_train_steps", "learning_rate", "validation_num_frames"):
        assert resumable not in message


def test_settings_that_may_change_on_resume_continue_the_run(lora_args, caplog):
    LoraTrainer(lora_args()).train()
    caplog.set_level(logging.INFO, logger="thematrix")
    resumed = LoraTrainer(
        lora_args(
            max_train_steps=TINY_RUN_STEPS + 1,
            checkpoints_total_limit=5,
            learning_rate=1e-3,
            validation_steps=3,
            validation_num_frames=9,
            validation_num_inference_steps=2,
        )
    )
    resumed.train()
    assert resumed.global_step == TINY_RUN_STEPS + 1 and len(resumed.history) == 1 and "resumed from" in caplog.text


def test_batch_settings_may_change_with_the_process_count_only_if_samples_per_step_stay(lora_args):
    LoraTrainer(lora_args(train_batch_size=2)).train()
    LoraTrainer(
        lora_args(train_batch_size=1, gradient_accumulation_steps=2, max_train_steps=TINY_RUN_STEPS + 1)
    ).train()
    with pytest.raises(ConfigError, match="train_batch_size = 1 there, 2 here"):
        LoraTrainer(
            lora_args(train_batch_size=2, gradient_accumulation_steps=2, max_train_steps=TINY_RUN_STEPS + 2)
        ).train()


class DrawRecorder(LoraTrainer):
    """Records (position in the run, caption) of every sample it trains on."""

    def __init__(self, args):
        super().__init__(args)
        self.draws: list[tuple[int, str]] = []

    def compute_loss(self, batch, first_sample_position):
        self.draws += [(first_sample_position + index, caption) for index, caption in enumerate(batch["caption"])]
        return super().compute_loss(batch, first_sample_position)


def test_a_run_resumed_with_other_samples_per_step_continues_after_the_samples_drawn(lora_args, tmp_path, caplog):
    """3 samples a step, then 2: steps 3 and 4 draw samples 6 to 9, the clips the uninterrupted run drew there (4
    shuffled clips an epoch: the rest of epoch 1, then the start of epoch 2), on the same schedule."""
    whole = DrawRecorder(lora_args("whole", gradient_accumulation_steps=3, max_train_steps=4))
    whole.train()
    LoraTrainer(lora_args("first", gradient_accumulation_steps=3, max_train_steps=2)).train()
    caplog.set_level(logging.INFO, logger="thematrix")
    resumed = DrawRecorder(
        lora_args(
            "second",
            gradient_accumulation_steps=2,
            max_train_steps=4,
            resume_from_checkpoint=str(tmp_path / "first" / "checkpoints" / "checkpoint-2"),
        )
    )
    resumed.train()
    assert "3 samples per optimizer step there" in caplog.text and "2 here" in caplog.text
    assert resumed.draws == [(position, caption) for position, caption in whole.draws if 6 <= position < 10]
    assert resumed.global_step == 4 and len(resumed.history) == 2


def test_a_resumed_micro_batch_starts_after_the_samples_drawn():
    """Micro-batches of 2 after 3 samples of an epoch: sample 4 is passed over; an epoch of 2 such is then complete."""
    position = DataPosition(epoch=1, epoch_samples=3, samples_drawn=7)
    assert position.align(per_micro_batch=2, epoch_micro_batches=3) == 1
    assert position == DataPosition(epoch=1, epoch_samples=4, samples_drawn=8)
    assert position.align(per_micro_batch=2, epoch_micro_batches=2) == 0
    assert position == DataPosition(epoch=2, epoch_samples=0, samples_drawn=8)


def test_a_changed_max_train_steps_is_refused_at_start_under_a_schedule_that_decays_over_it(lora_args):
    LoraTrainer(lora_args(lr_scheduler="cosine")).train()
    longer = LoraTrainer(lora_args(lr_scheduler="cosine", max_train_steps=TINY_RUN_STEPS + 1))
    with pytest.raises(ConfigError) as error:
        longer.setup()
    message = str(error.value)
    for expected in (f"max_train_steps = {TINY_RUN_STEPS} there, {TINY_RUN_STEPS + 1} here", "cosine", "would jump"):
        assert expected in message, message
    assert not hasattr(longer, "transformer")  # refused before any weight loads


def test_a_checkpoint_without_a_loss_scale_resumes_under_fp16_with_a_fresh_one(lora_args, tmp_path, caplog):
    """A GPU run switched to fp16 has a loss scaler that the checkpoint of a bf16 or fp32 run has no state for;
    on the CPU, where accelerate makes none, the test gives the run one."""
    LoraTrainer(lora_args()).train()
    resumed = LoraTrainer(lora_args(max_train_steps=TINY_RUN_STEPS + 1))
    resumed.setup()
    scaler = resumed.accelerator.scaler = torch.amp.GradScaler("cpu")
    caplog.set_level(logging.INFO, logger="thematrix")
    checkpoint = tmp_path / "run" / "checkpoints" / f"checkpoint-{TINY_RUN_STEPS}"
    state = resumed.checkpoints.load(checkpoint, resumed.lr_scheduler)
    assert state["global_step"] == TINY_RUN_STEPS and "the loss scale starts afresh" in caplog.text
    assert resumed.accelerator.scaler is scaler and scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()


def test_a_checkpoint_from_elsewhere_resumes_with_its_differences_logged(lora_args, tmp_path, caplog):
    LoraTrainer(lora_args("first")).train()
    caplog.set_level(logging.INFO, logger="thematrix")
    continued = LoraTrainer(
        lora_args(
            "second",
            seed=1,
            max_train_steps=TINY_RUN_STEPS + 1,
            resume_from_checkpoint=str(tmp_path / "first" / "checkpoints" / f"checkpoint-{TINY_RUN_STEPS}"),
        )
    )
    continued.train()
    assert continued.global_step == TINY_RUN_STEPS + 1 and "seed = 0 there, 1 here" in caplog.text


def test_a_checkpoint_from_elsewhere_with_another_optimizer_state_is_refused_before_training(lora_args, tmp_path):
    """8-bit moments and float32 ones are stored differently: loading one into the other would fail deep inside the
    optimizer, so the resume stops at start, naming the setting to restore."""
    pytest.importorskip("bitsandbytes")
    LoraTrainer(lora_args("first")).train()
    checkpoint = tmp_path / "first" / "checkpoints" / f"checkpoint-{TINY_RUN_STEPS}"
    resumed = LoraTrainer(lora_args("second", use_8bit_adam=True, resume_from_checkpoint=str(checkpoint)))
    with pytest.raises(ConfigError, match=r"use_8bit_adam = False there, True here.*Set args.use_8bit_adam = False"):
        resumed.train()
    assert not (tmp_path / "second" / "checkpoints").exists()


def test_checkpoint_estimate_counts_weights_moments_and_registered_objects(tmp_path):
    """What a stage registers for checkpointing (stage 4's EMA target) counts; accelerate keeps the list privately."""

    class Registered:
        def __init__(self, size):
            self.weights = torch.zeros(size)

        def state_dict(self):
            return {"weights": self.weights}

        def load_state_dict(self, state):
            self.weights = state["weights"]

    accelerator = Accelerator()
    checkpoints = Checkpoints(accelerator, tmp_path, LoraArgs())
    weights_only = checkpoints.estimated_bytes(1000)
    assert weights_only == 1000 * 4 * (1 + OPTIMIZER_STATES_PER_WEIGHT)
    accelerator.register_for_checkpointing(Registered(500))
    assert checkpoints.estimated_bytes(1000) == weights_only + 500 * 4
    # 8-bit moments: a byte a weight each, and a float32 scale a block of 256 weights.
    eight_bit = Checkpoints(accelerator, tmp_path, LoraArgs(use_8bit_adam=True))
    assert eight_bit.estimated_bytes(1024) == 1024 * 4 + 2 * (1024 + 4 * 4) + 500 * 4
