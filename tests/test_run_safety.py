"""Runs that go wrong fail safe, on stage 1 and the tiny model: non-finite values, stop signals, a full disk,
a failing validation. Each stops with a message naming the step and the fix, and leaves a good checkpoint.
Settings that cannot run are refused at start, before any clip is encoded or weight loads."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from stage1.train_text_to_video_lora import LoraTrainer, main
from stage1.training.arguments import LoraArgs
from stage4.training.arguments import ScmArgs
from tests.conftest import TINY_HEIGHT, TINY_RUN_STEPS, TINY_WIDTH
from tests.launching import (
    REPO_ROOT,
    finish,
    launch_stage1,
    wait_for_steps,
    write_config,
)
from thematrix.cli import USAGE_EXIT_CODE, run
from thematrix.config import ConfigError
from thematrix.model_dir import DEFAULT_TEXT_GUIDANCE, LORA_WEIGHT_NAME, NO_TEXT_GUIDANCE, generation_defaults
from thematrix.training import run_safety
from thematrix.training import trainer as trainer_module
from thematrix.training.checkpoint import (
    TRAINABLE_WEIGHTS,
    TRAINER_STATE,
    TRAINING_MODE,
    checkpoint_step,
    directory_bytes,
    list_checkpoints,
)
from thematrix.training.clips import cache_entry_bytes
from thematrix.training.metrics import METRICS_FILE, read_records
from thematrix.training.run_safety import (
    PREEMPTED_EXIT_CODE,
    RunFailed,
    RunPreempted,
    StopSignals,
)
from thematrix.training.sharding import TrainingMode
from thematrix.training.trainer import resolve_validation_sampling

DIVERGING_LR = 1e30  # one Adam step moves every LoRA weight by about 10x this: step 2 overflows to inf and nan


def nan_loss_at(steps: set[int]) -> type:
    """The stage-1 trainer whose loss is NaN at the given optimizer steps."""

    class NanLoss(LoraTrainer):
        def compute_loss(self, batch, first_sample_position):
            loss = super().compute_loss(batch, first_sample_position)
            return loss * math.nan if self.global_step + 1 in steps else loss

    return NanLoss


class InfiniteGradient(torch.autograd.Function):
    """The identity, whose backward pass returns infinite gradients."""

    @staticmethod
    def forward(ctx, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.inf)


class InfiniteGradientAtStep2(LoraTrainer):
    def compute_loss(self, batch, first_sample_position):
        loss = super().compute_loss(batch, first_sample_position)
        if self.global_step + 1 != 2:
            return loss
        weight = next(param for param in self.transformer.parameters() if param.requires_grad)
        return loss + 0 * InfiniteGradient.apply(weight).sum()  # the loss stays finite


def trainable_weights(checkpoint) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / TRAINABLE_WEIGHTS))


def checkpoint_steps(output_dir) -> list[int]:
    return [checkpoint_step(path) for path in list_checkpoints(output_dir / "checkpoints")]


# ---------------------------------------------------------------- non-finite loss and gradients
def test_diverging_run_stops_at_the_step_naming_loss_checkpoint_and_fix(lora_args, tmp_path, capsys):
    args = lora_args(learning_rate=DIVERGING_LR)
    config = write_config(args, tmp_path / "config.py")
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: main(["--config", str(config)]))
    assert exit_info.value.code == USAGE_EXIT_CODE
    message = capsys.readouterr().err
    output_dir = tmp_path / "run"
    for expected in (
        "step 2: non-finite loss",
        "loss nan",
        str(output_dir / "checkpoints" / "checkpoint-1"),
        "args.learning_rate",
    ):
        assert expected in message, message
    assert checkpoint_steps(output_dir) == [1]
    assert all(
        torch.isfinite(value).all() for value in trainable_weights(output_dir / "checkpoints" / "checkpoint-1").values()
    )
    assert not (output_dir / LORA_WEIGHT_NAME).exists()


def test_a_run_stopped_by_a_nonfinite_loss_resumes_from_its_last_checkpoint_with_a_new_learning_rate(
    lora_args, tmp_path
):
    with pytest.raises(RunFailed, match="step 2: non-finite loss"):
        nan_loss_at({2})(lora_args()).train()
    resumed = LoraTrainer(lora_args(learning_rate=1e-3))  # the learning rate may change on resume
    resumed.train()
    assert resumed.global_step == TINY_RUN_STEPS and [entry["lr"] for entry in resumed.history] == [1e-3] * (
        TINY_RUN_STEPS - 1
    )
    assert checkpoint_steps(tmp_path / "run") == [1, 2, 3]


def test_a_skipped_nonfinite_step_changes_nothing_and_is_counted(lora_args, tmp_path):
    trainer = nan_loss_at({2})(lora_args(max_nonfinite_steps=1))
    trainer.train()
    checkpoints = tmp_path / "run" / "checkpoints"
    before, after = trainable_weights(checkpoints / "checkpoint-1"), trainable_weights(checkpoints / "checkpoint-2")
    assert all(torch.equal(before[name], after[name]) for name in before)
    moments_before = torch.load(checkpoints / "checkpoint-1" / "optimizer.bin", weights_only=False)["state"]
    moments_after = torch.load(checkpoints / "checkpoint-2" / "optimizer.bin", weights_only=False)["state"]
    assert all(torch.equal(moments_before[key]["exp_avg"], moments_after[key]["exp_avg"]) for key in moments_before)
    # Step 3 trains again; the count is logged and kept in the checkpoint for a resumed run.
    assert not torch.equal(after[next(iter(after))], trainable_weights(checkpoints / "checkpoint-3")[next(iter(after))])
    assert [entry.get("skipped_steps") for entry in trainer.history] == [None, 1, 1]
    assert json.loads((checkpoints / "checkpoint-3" / "trainer_state.json").read_text())["skipped_steps"] == 1
    assert (tmp_path / "run" / LORA_WEIGHT_NAME).is_file()


def test_more_nonfinite_steps_than_allowed_stop_the_run(lora_args, tmp_path):
    with pytest.raises(RunFailed, match="step 3: non-finite loss"):
        nan_loss_at({2, 3})(lora_args(max_nonfinite_steps=1)).train()
    assert checkpoint_steps(tmp_path / "run") == [1, 2]


def test_nonfinite_gradient_under_a_finite_loss_stops_the_run(lora_args, tmp_path):
    with pytest.raises(RunFailed, match="step 2: non-finite gradient norm") as failure:
        InfiniteGradientAtStep2(lora_args()).train()
    assert "grad_norm inf" in str(failure.value) and checkpoint_steps(tmp_path / "run") == [1]


def test_nonfinite_weights_are_never_saved(lora_args, tmp_path):
    trainer = LoraTrainer(lora_args())
    trainer.setup()
    trainer.train()
    weight = next(param for param in trainer.transformer.parameters() if param.requires_grad)
    with torch.no_grad():
        weight[0] = math.nan
    trainer.global_step += 1
    with pytest.raises(RunFailed, match="trainable weights are not finite"):
        trainer.save_checkpoint()
    assert checkpoint_steps(tmp_path / "run") == [1, 2, 3]


# ---------------------------------------------------------------- stop signals
def test_a_signal_before_training_stops_at_once():
    with StopSignals() as signals, pytest.raises(RunPreempted, match="before training started"):
        signal.raise_signal(signal.SIGTERM)
    assert signals.received == "SIGTERM"


def test_a_signal_during_training_waits_for_the_step_boundary_and_a_duplicate_is_ignored():
    with StopSignals(clock=lambda: 0.0) as signals:
        signals.training = True
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)  # the same request, delivered a second way at the same moment
        assert signals.requested and signals.received == "SIGINT"
    assert signal.getsignal(signal.SIGTERM) is not signals._handle  # handlers restored


def test_a_second_signal_ends_the_process_at_once():
    script = (
        "import itertools, signal\n"
        "from thematrix.training.run_safety import StopSignals\n"
        "ticks = itertools.count(0, 60)\n"
        "with StopSignals(clock=lambda: next(ticks)) as signals:\n"
        "    signals.training = True\n"
        "    signal.raise_signal(signal.SIGTERM)\n"
        "    print('first signal: training goes on', flush=True)\n"
        "    signal.raise_signal(signal.SIGTERM)\n"
        "    print('still running')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGTERM, result.stderr
    assert "training goes on" in result.stdout and "still running" not in result.stdout


def test_sigint_to_the_launcher_saves_a_checkpoint_and_the_same_command_resumes_exactly(lora_args, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="thematrix")
    # Enough micro-batches per step that the signal lands long before the last step.
    settings = dict(
        max_train_steps=12,
        gradient_accumulation_steps=16,
        checkpointing_steps=100,
        lr_scheduler="cosine",
        lr_warmup_steps=2,
    )
    config = write_config(lora_args(**settings), tmp_path / "config.py")
    output_dir, log = tmp_path / "run", tmp_path / "run.log"
    process = launch_stage1(config, log)
    wait_for_steps(output_dir, 1, process, log)
    # To the launcher alone, which passes it on (Ctrl-C signals the trainer too: a duplicate, ignored as above).
    process.send_signal(signal.SIGINT)
    code, output = finish(process, log)
    assert code == PREEMPTED_EXIT_CODE, output[-4000:]
    last_line = output.strip().splitlines()[-1]
    assert last_line.startswith("stopped: SIGINT at step") and last_line.endswith("rerun the same command to resume"), (
        output[-4000:]
    )
    (stopped_at,) = checkpoint_steps(output_dir)
    assert 1 <= stopped_at < 12

    main(["--config", str(config)])  # the launched script's entry point, here in the test's process
    assert f"resumed from {output_dir / 'checkpoints' / f'checkpoint-{stopped_at}'}" in caplog.text
    LoraTrainer(lora_args("whole", **settings)).train()
    whole, resumed = (
        load_file(str(tmp_path / "whole" / LORA_WEIGHT_NAME)),
        load_file(str(output_dir / LORA_WEIGHT_NAME)),
    )
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], atol=1e-6, rtol=1e-5, msg=name)
    steps = [record["step"] for record in read_records(output_dir / METRICS_FILE) if "loss" in record]
    assert steps == list(range(1, 13))  # what the interrupted run logged after its checkpoint is not counted twice


class SignalledDuringValidation(LoraTrainer):
    def validation_videos(self):
        for index, video in enumerate(super().validation_videos()):
            if index == 1:
                signal.raise_signal(signal.SIGTERM)
            yield video


def test_a_signal_during_validation_cuts_it_short_and_stops_with_a_checkpoint(lora_args, tmp_path):
    args = lora_args(
        max_train_steps=4,
        checkpointing_steps=100,
        validation_steps=2,
        validation_num_frames=9,
        validation_num_inference_steps=2,
        validation_prompts=("a", "b", "c"),
    )
    with pytest.raises(RunPreempted, match="SIGTERM at step 2"):
        SignalledDuringValidation(args).train()
    assert checkpoint_steps(tmp_path / "run") == [2]
    assert sorted(path.name for path in (tmp_path / "run" / "validation" / "step-2").iterdir()) == [
        "prompt-0.mp4",
        "prompt-1.mp4",
    ]


# ---------------------------------------------------------------- disk space
def test_a_disk_too_small_for_the_checkpoints_is_an_error_at_start(lora_args, monkeypatch):
    trainer = LoraTrainer(lora_args(checkpoints_total_limit=2, max_train_steps=5))
    trainer.setup()  # the cache fits
    per_checkpoint = trainer.checkpoints.estimated_bytes(trainer.num_trainable_parameters)
    monkeypatch.setattr(run_safety, "free_disk_bytes", lambda path: 2 * per_checkpoint)
    with pytest.raises(ConfigError, match=r"3 checkpoint\(s\).*lower args.checkpoints_total_limit"):
        trainer.train()
    assert trainer.global_step == 0


def test_checkpoint_estimate_grows_as_written_checkpoints_do(lora_args, tmp_path):
    """Two LoRA ranks: the fixed part of a checkpoint (RNG states, settings) cancels in the difference."""
    sizes, estimates = [], []
    for rank in (16, 64):
        trainer = LoraTrainer(lora_args(f"rank-{rank}", rank=rank, lora_alpha=float(rank), max_train_steps=1))
        trainer.train()
        sizes.append(directory_bytes(tmp_path / f"rank-{rank}" / "checkpoints" / "checkpoint-1"))
        estimates.append(trainer.checkpoints.estimated_bytes(trainer.num_trainable_parameters))
    assert sizes[1] - sizes[0] == pytest.approx(estimates[1] - estimates[0], rel=0.01)


def test_a_disk_too_small_for_the_latent_cache_is_an_error_before_encoding(lora_args, tmp_path, monkeypatch):
    monkeypatch.setattr(run_safety, "free_disk_bytes", lambda path: 1000)
    args = lora_args(cache_dir=str(tmp_path / "new-cache"))
    with pytest.raises(ConfigError, match="4 latent cache entries.*args.cache_dir"):
        LoraTrainer(args).setup()
    assert not list((tmp_path / "new-cache").glob("*.safetensors"))


def test_cache_entry_estimate_matches_the_entries(lora_args, tmp_path):
    trainer = LoraTrainer(lora_args(cache_dir=str(tmp_path / "cache")))
    trainer.setup()
    sizes = [entry.stat().st_size for entry in (tmp_path / "cache").glob("*.safetensors")]
    estimate = cache_entry_bytes(trainer.dataset.buckets[0], trainer.args, trainer.vae, trainer.text_encoder)
    assert len(sizes) == 4 and all(estimate <= size <= estimate * run_safety.DISK_HEADROOM for size in sizes), (
        estimate,
        sizes,
    )


# ---------------------------------------------------------------- validation failure
class ValidationOutOfMemory(LoraTrainer):
    def validation_videos(self):
        raise RuntimeError("out of memory (simulated)")


def test_a_failing_validation_saves_a_checkpoint_then_stops_naming_step_and_settings(lora_args, tmp_path):
    args = lora_args(max_train_steps=4, checkpointing_steps=100, validation_steps=2, validation_num_frames=9)
    with pytest.raises(RunFailed) as failure:
        ValidationOutOfMemory(args).train()
    message = str(failure.value)
    for expected in ("validation at step 2 failed", "out of memory (simulated)", "'validation_num_frames': 9", "48x64"):
        assert expected in message, message
    assert checkpoint_steps(tmp_path / "run") == [2]


def test_a_failing_validation_can_be_logged_and_the_run_goes_on(lora_args, tmp_path, caplog):
    args = lora_args(
        max_train_steps=4,
        checkpointing_steps=100,
        validation_steps=2,
        validation_num_frames=9,
        stop_on_validation_failure=False,
    )
    trainer = ValidationOutOfMemory(args)
    trainer.train()
    assert trainer.global_step == 4 and (tmp_path / "run" / LORA_WEIGHT_NAME).is_file()
    assert checkpoint_steps(tmp_path / "run") == [2, 4]
    assert "training goes on" in caplog.text
    assert trainer.transformer.training


# ---------------------------------------------------------------- settings checked at start
@pytest.mark.parametrize(
    "settings, error, expected",
    [
        (dict(lr_scheduler="cosine_annealing"), ConfigError, "args.lr_scheduler is 'cosine_annealing'"),
        (dict(train_batch_size=5), ValueError, "no frame bucket .*5 clips"),  # of the 4 clips
        (dict(max_text_seq_length=16), ConfigError, "args.max_text_seq_length = 16"),
    ],
)
def test_settings_that_cannot_train_are_refused_before_any_clip_is_encoded(
    lora_args, tmp_path, settings, error, expected
):
    with pytest.raises(error, match=expected):
        LoraTrainer(lora_args(cache_dir=str(tmp_path / "new-cache"), **settings)).setup()
    assert not list((tmp_path / "new-cache").glob("*.safetensors"))


def test_validation_videos_without_ffmpeg_are_refused_at_start_and_a_run_without_videos_starts(
    lora_args, tmp_path, monkeypatch
):
    monkeypatch.setattr(trainer_module, "can_write_mp4", lambda: False)
    with pytest.raises(ConfigError, match=r"args.validation_steps = 2 writes validation videos as mp4.*= 0"):
        LoraTrainer(lora_args(validation_steps=2, cache_dir=str(tmp_path / "new-cache"))).setup()
    assert not list((tmp_path / "new-cache").glob("*.safetensors"))
    LoraTrainer(lora_args(validation_steps=0)).setup()


def test_the_frame_size_defaults_to_the_models_and_a_size_contradicting_its_record_is_refused(
    lora_args, tiny_model_dir, tmp_path
):
    # A base model records nothing: its VAE's native size.
    trainer = LoraTrainer(lora_args(height=None, width=None))
    trainer.setup()
    assert (trainer.args.height, trainer.args.width) == (TINY_HEIGHT, TINY_WIDTH)
    recorded = tmp_path / "recorded"
    shutil.copytree(tiny_model_dir, recorded)
    record = dataclasses.replace(
        generation_defaults(recorded), height=2 * TINY_HEIGHT, width=2 * TINY_WIDTH, prompt="a car"
    )
    record.save(recorded)
    with pytest.raises(
        ConfigError,
        match=rf"args.height is {TINY_HEIGHT}, but the model at .* was trained with {2 * TINY_HEIGHT}",
    ):
        LoraTrainer(lora_args(pretrained_model_name_or_path=str(recorded))).setup()
    unset = LoraTrainer(lora_args(pretrained_model_name_or_path=str(recorded), height=None, width=None))
    unset.setup()
    assert (unset.args.height, unset.args.width) == (2 * TINY_HEIGHT, 2 * TINY_WIDTH)


def test_a_run_that_drops_every_caption_validates_and_records_the_empty_caption_without_text_guidance(
    lora_args, tiny_model_dir, tmp_path
):
    """caption_p_zero = 1 trains under the empty caption alone: the run validates as its model will be sampled,
    under that caption without text guidance, and records both; a run that trains captions validates under the
    input model's prompt at CogVideoX's guidance and records no guidance (the sampler's own)."""
    recorded = tmp_path / "recorded"
    shutil.copytree(tiny_model_dir, recorded)
    dataclasses.replace(generation_defaults(recorded), prompt="a car").save(recorded)
    for caption_p_zero, prompt, guidance, recorded_guidance in (
        (1.0, "", NO_TEXT_GUIDANCE, NO_TEXT_GUIDANCE),
        (0.1, "a car", DEFAULT_TEXT_GUIDANCE, None),
    ):
        settings = dict(pretrained_model_name_or_path=str(recorded), caption_p_zero=caption_p_zero)
        trainer = LoraTrainer(lora_args(f"run-{caption_p_zero}", **settings))
        trainer.setup()
        args = trainer.args
        assert (args.validation_prompts, args.validation_guidance_scale) == ((prompt,), guidance)
        record = args.generation_defaults()
        assert (record.prompt, record.guidance_scale) == (prompt, recorded_guidance)


@pytest.mark.parametrize(
    "args, model_prompt, prompts, guidance",
    [
        # a model whose run trained no caption records the empty one: the footage's caption is a prompt of it
        (LoraArgs(), "", ("the first caption",), DEFAULT_TEXT_GUIDANCE),
        (LoraArgs(), None, ("the first caption",), DEFAULT_TEXT_GUIDANCE),
        (
            LoraArgs(caption_p_zero=1.0, validation_prompts=("a car",), validation_guidance_scale=3.0),
            "a road",
            ("a car",),
            3.0,
        ),
        (ScmArgs(), "a road", ("a road",), 1.0),  # the student validates unguided whatever its run's captions
    ],
)
def test_given_validation_settings_are_kept_and_unset_ones_follow_the_run(args, model_prompt, prompts, guidance):
    resolve_validation_sampling(args, model_prompt, "the first caption")
    assert (args.validation_prompts, args.validation_guidance_scale) == (prompts, guidance)


def test_a_checkpoint_this_run_cannot_resume_is_refused_before_any_weight_loads(lora_args, tmp_path):
    LoraTrainer(lora_args()).train()
    with pytest.raises(ConfigError, match="seed = 0 there, 1 here"):
        other_seed = LoraTrainer(lora_args(seed=1))
        other_seed.setup()
    state_file = tmp_path / "run" / "checkpoints" / f"checkpoint-{TINY_RUN_STEPS}" / TRAINER_STATE
    state_file.write_text(json.dumps(json.loads(state_file.read_text()) | {TRAINING_MODE: TrainingMode.FSDP.value}))
    with pytest.raises(ConfigError, match="was written under FSDP"):
        other_mode = LoraTrainer(lora_args())
        other_mode.setup()
    assert not hasattr(other_seed, "vae") and not hasattr(other_mode, "vae")
