"""What a run reports: every tracker accelerate supports is accepted (or refused with the fix), metrics.jsonl,
the metrics.png plot, the validation loss and validation frames, on stage 1 and the tiny model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from accelerate.utils import LoggerType
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stage1.train_text_to_video_lora import LoraTrainer
from stage1.training.arguments import LoraArgs
from tests.conftest import tiny_run_args
from thematrix.config import ConfigError
from thematrix.training import metrics
from thematrix.training.metrics import (
    METRICS_FILE,
    PLOT_FILE,
    RunMetrics,
    plot_metrics,
    read_records,
    tracker_names,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS, VALIDATION_STEPS = 4, 2


@pytest.fixture(scope="module")
def reported_run(tiny_model_dir, tiny_dataset, tmp_path_factory):
    """A run reporting to tensorboard, validated twice."""
    output_dir = tmp_path_factory.mktemp("metrics") / "run"
    args = tiny_run_args(
        LoraArgs(),
        tiny_model_dir,
        tiny_dataset,
        output_dir,
        rank=4,
        lora_alpha=4.0,
        max_train_steps=STEPS,
        validation_steps=VALIDATION_STEPS,
        validation_num_frames=9,
        validation_num_inference_steps=2,
        report_to="tensorboard",
    )
    trainer = LoraTrainer(args)
    trainer.train()
    return trainer, output_dir


def test_every_tracker_accelerate_supports_is_accepted(monkeypatch):
    monkeypatch.setattr(metrics, "get_available_trackers", lambda: list(LoggerType))
    assert tracker_names("none") == []
    assert tracker_names("wandb") == ["wandb"]
    assert tracker_names("tensorboard, mlflow") == ["tensorboard", "mlflow"]
    assert tracker_names("all") == ["all"]


def test_an_unknown_tracker_is_refused_listing_the_supported_ones():
    with pytest.raises(ConfigError, match="'tensorbord'.*not a tracker accelerate supports.*'wandb'"):
        tracker_names("tensorbord")


def test_a_tracker_whose_package_is_missing_is_refused_with_the_install_command(monkeypatch):
    monkeypatch.setattr(metrics, "get_available_trackers", lambda: [LoggerType.TENSORBOARD])
    with pytest.raises(ConfigError, match="pip install wandb"):
        tracker_names("tensorboard,wandb")


def test_every_step_and_validation_is_in_metrics_jsonl(reported_run):
    _, output_dir = reported_run
    records = read_records(output_dir / METRICS_FILE)
    steps = [record for record in records if "loss" in record]
    assert [record["step"] for record in steps] == list(range(1, STEPS + 1))
    assert all(
        {"lr", "grad_norm", "step_time_s"} <= record.keys() and "skipped_steps" not in record for record in steps
    )
    validations = [record for record in records if "validation_loss" in record]
    assert [record["step"] for record in validations] == [VALIDATION_STEPS, 2 * VALIDATION_STEPS]
    assert all(math.isfinite(record["validation_loss"]) for record in validations)


def test_the_run_ends_with_a_plot_of_its_metrics(reported_run):
    _, output_dir = reported_run
    plot = output_dir / PLOT_FILE
    assert plot.read_bytes()[:8] == PNG_SIGNATURE


def test_tensorboard_holds_the_metrics_and_validation_frames(reported_run):
    _, output_dir = reported_run
    accumulator = EventAccumulator(str(output_dir / "logs" / "train"))  # accelerate's run name
    accumulator.Reload()
    assert {"loss", "lr", "grad_norm", "validation_loss"} <= set(accumulator.Tags()["scalars"])
    assert [event.step for event in accumulator.Scalars("loss")] == list(range(1, STEPS + 1))
    assert "validation/prompt-0" in accumulator.Tags()["images"]


def test_the_validation_loss_is_measured_on_the_same_draws_every_time(reported_run):
    trainer, _ = reported_run
    first, second = trainer.validation_loss(), trainer.validation_loss()
    assert first == second
    assert first != trainer.history[-1]["loss"]


def test_trackers_that_take_image_lists_get_one_image_per_frame(tmp_path):
    class ListTracker:
        name = "wandb"

        def __init__(self):
            self.logged = []

        def log_images(self, values, step):
            self.logged.append((values, step))

    tracker = ListTracker()
    accelerator = SimpleNamespace(is_main_process=True, trackers=[tracker])
    frames = np.zeros((9, 6, 8, 3), dtype=np.uint8)
    RunMetrics(accelerator, tmp_path, logging_steps=1, first_step=0).log_frames("validation/prompt-0", frames, 7)
    ((values, step),) = tracker.logged
    assert step == 7 and [image.shape for image in values["validation/prompt-0"]] == [(6, 8, 3)] * 5


def test_a_plot_of_a_diverged_run_shows_its_finite_part(tmp_path):
    records = [
        {"step": 1, "loss": 1.0, "lr": 1e-3},
        {"step": 2, "loss": math.nan, "lr": 1e-3},
        {"step": 2, "validation_loss": 0.5},
    ]
    plot_metrics(records, tmp_path / PLOT_FILE)
    assert (tmp_path / PLOT_FILE).read_bytes()[:8] == PNG_SIGNATURE
