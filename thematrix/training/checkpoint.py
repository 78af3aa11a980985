"""Checkpoints of a run: written atomically, the last few kept, resumed exactly, refused when another run wrote them.

A checkpoint is accelerate's state (optimizer, LR schedule, RNG states, objects registered for
checkpointing), the trainer's counters and training mode in ``trainer_state.json`` and the run's settings in
``config.json``, with the weights as the mode keeps them (``sharding``): data parallel, the trainable
weights alone in ``trainable.safetensors``; FSDP, each process's shard of the model and optimizer state
(torch's distributed checkpoint, read back on any number of processes); DeepSpeed, its own checkpoint of
the model and of each process's optimizer partition. It is written into ``checkpoint-N.partial`` and
renamed when complete; older checkpoints are deleted only after that.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import SCALER_NAME
from diffusers.optimization import SchedulerType
from safetensors.torch import load_file, save_file

from thematrix.config import ConfigError, StrictArgs
from thematrix.training.arguments import LATEST_CHECKPOINT
from thematrix.training.run_safety import gib
from thematrix.training.sharding import TrainingMode, training_mode

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
PARTIAL_SUFFIX = ".partial"
TRAINABLE_WEIGHTS = "trainable.safetensors"
TRAINER_STATE = "trainer_state.json"
RESOLVED_CONFIG = "config.json"
# AdamW keeps two moments (exp_avg, exp_avg_sq) per trainable weight, each of the weight's size.
OPTIMIZER_STATES_PER_WEIGHT = 2
# Under args.use_8bit_adam a moment takes a byte a weight and a float32 scale a block of this many weights.
EIGHT_BIT_MOMENT_BLOCK = 256
# Settings that may differ between a run and the checkpoints it resumes: when and how it checkpoints,
# validates and logs, where files go, memory/speed switches that leave the result alone, and the knobs
# that rescue a diverging run. Every other setting defines the run: a difference is an error.
RESUMABLE_SETTINGS = frozenset(
    {
        "output_dir",
        "resume_from_checkpoint",
        "max_train_steps",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "logging_steps",
        "profile_steps",
        "report_to",
        "dataloader_num_workers",
        "cache_latents",
        "cache_dir",
        "enable_slicing",
        "enable_tiling",
        "gradient_checkpointing",
        "checkpoint_keeps_attention",
        "offload_checkpoints",
        "allow_tf32",
        "compile_blocks",
        "learning_rate",
        "max_grad_norm",
        "mixed_precision",
        "max_nonfinite_steps",
        "stop_on_validation_failure",
    }
)
RESUMABLE_PREFIX = "validation_"  # every stage's validation settings
# Settings that change how the optimizer's state is stored: a checkpoint written under another value cannot be loaded,
# even from elsewhere (where other differences are only logged).
OPTIMIZER_STATE_SETTINGS = frozenset({"use_8bit_adam"})
TRAINING_MODE = "training_mode"
NUM_PROCESSES = "num_processes"
# How to launch under each mode's checkpoints (thematrix/accelerate_launch.sh).
LAUNCH_SETTING = {
    TrainingMode.DATA_PARALLEL.value: "ACCELERATE_CONFIG unset",
    TrainingMode.FSDP.value: "ACCELERATE_CONFIG=fsdp",
    TrainingMode.DEEPSPEED.value: "ACCELERATE_CONFIG=deepspeed_zero2",
}
# These may change together with the number of processes, as long as the samples per optimizer step do not. The
# number of processes alone may change the samples per step: the run goes on (``samples_per_step_change``).
BATCH_SETTINGS = frozenset({"train_batch_size", "gradient_accumulation_steps"})
SAMPLES_PER_STEP = "samples_per_step"
# Schedules whose learning rate at a step does not depend on args.max_train_steps: only under these may it change on
# resume. Under the others (cosine, linear, ...) the rate would jump at the resumed step to another curve's.
SCHEDULES_FREE_OF_MAX_STEPS = frozenset(
    {SchedulerType.CONSTANT.value, SchedulerType.CONSTANT_WITH_WARMUP.value, SchedulerType.PIECEWISE_CONSTANT.value}
)


def list_checkpoints(checkpoint_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first; ``.partial`` directories of killed saves are ignored."""
    if not checkpoint_root.is_dir():
        return []
    found = [
        path
        for path in checkpoint_root.iterdir()
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and not path.name.endswith(PARTIAL_SUFFIX)
    ]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def directory_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def changed_settings(
    args: StrictArgs, saved: dict[str, Any], saved_state: dict[str, Any], samples_per_step: int
) -> dict[str, tuple]:
    """Settings that define the run and differ from the checkpoint's: name -> (checkpoint's value, this run's).

    ``max_train_steps`` defines it too under a schedule that decays over it (see SCHEDULES_FREE_OF_MAX_STEPS).
    """
    current = json.loads(json.dumps(args.to_dict(), default=str))
    resumable = RESUMABLE_SETTINGS
    if args.lr_scheduler not in SCHEDULES_FREE_OF_MAX_STEPS:
        resumable = resumable - {"max_train_steps"}
    changed = {
        name: (saved[name], value)
        for name, value in current.items()
        if name in saved and saved[name] != value and name not in resumable and not name.startswith(RESUMABLE_PREFIX)
    }
    if saved_state.get(SAMPLES_PER_STEP) == samples_per_step:
        changed = {name: values for name, values in changed.items() if name not in BATCH_SETTINGS}
    return changed


def describe_changes(changed: dict[str, tuple], lr_scheduler: str) -> str:
    described = "; ".join(f"{name} = {old!r} there, {new!r} here" for name, (old, new) in sorted(changed.items()))
    if "max_train_steps" in changed:
        described += (
            f" (the {lr_scheduler} schedule runs over max_train_steps: its learning rate would jump at the resumed "
            f"step; only {', '.join(sorted(SCHEDULES_FREE_OF_MAX_STEPS))} schedules may change it on resume)"
        )
    return described


def samples_per_step_change(
    saved: dict[str, Any], saved_state: dict[str, Any], args: StrictArgs, num_processes: int, samples_per_step: int
) -> str | None:
    """What a resume changes of the samples per optimizer step (train_batch_size x gradient_accumulation_steps x
    processes) and how to keep them, or None when they stay: the schedule counts optimizer steps and the data
    continues where it was, so the run goes on, each step training on another number of samples."""
    saved_count, count = saved_state.get(SAMPLES_PER_STEP), samples_per_step
    if saved_count is None or saved_count == count:
        return None
    saved_processes = saved_state.get(NUM_PROCESSES, num_processes)
    advice = ""
    per_micro_batch = args.train_batch_size * num_processes
    if saved_count % per_micro_batch == 0:
        advice = f"; for {saved_count} again, set args.gradient_accumulation_steps = {saved_count // per_micro_batch}"
    return (
        f"{saved_count} samples per optimizer step there (train_batch_size {saved['train_batch_size']} x "
        f"gradient_accumulation_steps {saved['gradient_accumulation_steps']} x {saved_processes} processes), "
        f"{count} here ({args.train_batch_size} x {args.gradient_accumulation_steps} x {num_processes}): the learning-rate "
        f"schedule continues at the checkpoint's optimizer step and the data after the samples it has drawn; "
        f"args.max_train_steps still counts optimizer steps, each now of {count} samples{advice}"
    )


class Checkpoints:
    """Saves and resumes the checkpoints of one run under ``root`` (``<output_dir>/checkpoints``)."""

    def __init__(self, accelerator: Accelerator, root: Path, args: StrictArgs):
        self.accelerator = accelerator
        self.root = root
        self.args = args
        accelerator.register_save_state_pre_hook(self._save_trainable_hook)
        accelerator.register_load_state_pre_hook(self._load_trainable_hook)

    # ---------------------------------------------------------------- trainable weights only
    @staticmethod
    def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {name: param.detach().contiguous() for name, param in model.named_parameters() if param.requires_grad}

    def _save_trainable_hook(self, models, weights, output_dir) -> None:
        """Data parallel: the trainable weights alone, not accelerate's whole model (FSDP and DeepSpeed save
        their own shards of it)."""
        if training_mode(self.accelerator) is not TrainingMode.DATA_PARALLEL:
            return
        if self.accelerator.is_main_process:
            for model in models:
                save_file(
                    self.trainable_state(self.accelerator.unwrap_model(model)),
                    os.path.join(output_dir, TRAINABLE_WEIGHTS),
                )
        weights.clear()

    def _load_trainable_hook(self, models, input_dir) -> None:
        if training_mode(self.accelerator) is not TrainingMode.DATA_PARALLEL:
            return
        model = self.accelerator.unwrap_model(models.pop())
        state = load_file(os.path.join(input_dir, TRAINABLE_WEIGHTS))
        expected = set(self.trainable_state(model))
        if set(state) != expected:
            raise ConfigError(
                f"{input_dir}: checkpoint weights do not match the trainable parameters of this run "
                f"(missing {sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}); "
                "it was written by a run with other settings. Set args.resume_from_checkpoint = None to start fresh."
            )
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                parameters[name].copy_(value)

    # ---------------------------------------------------------------- save
    def latest(self) -> Path | None:
        found = list_checkpoints(self.root)
        return found[-1] if found else None

    def has(self, step: int) -> bool:
        return (self.root / f"{CHECKPOINT_PREFIX}{step}").is_dir()

    def save(self, step: int, trainer_state: dict[str, Any]) -> Path:
        """Write checkpoint-<step> atomically, then delete the oldest beyond ``args.checkpoints_total_limit``."""
        final = self.root / f"{CHECKPOINT_PREFIX}{step}"
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        if self.accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(partial))
        self.accelerator.wait_for_everyone()  # every process has written its files (RNG states, shards) into partial
        if self.accelerator.is_main_process:
            (partial / TRAINER_STATE).write_text(json.dumps(trainer_state | self.mode_state()))
            self.args.save(partial / RESOLVED_CONFIG)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            limit = self.args.checkpoints_total_limit
            if limit is not None:
                for old in list_checkpoints(self.root)[:-limit]:
                    shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return final

    def estimated_bytes(self, num_trainable_weights: int) -> int:
        """Size of one checkpoint: float32 trainable weights, their optimizer moments (float32, or 8-bit under
        args.use_8bit_adam), the objects registered for checkpointing (e.g. stage 4's EMA target)."""
        float32 = torch.float32.itemsize
        moment = 1 + float32 / EIGHT_BIT_MOMENT_BLOCK if self.args.use_8bit_adam else float32
        weights = round(num_trainable_weights * (float32 + OPTIMIZER_STATES_PER_WEIGHT * moment))
        registered = sum(
            value.numel() * value.element_size()
            for obj in self.accelerator._custom_objects  # accelerate keeps no public list of them
            for value in obj.state_dict().values()
            if isinstance(value, torch.Tensor)
        )
        return weights + registered

    def disk_needs(self, first_step: int, num_trainable_weights: int) -> tuple[str, int]:
        """(what, bytes) the rest of the run's checkpoints add to the disk at their peak: the kept ones plus the
        one being written, measured on the latest checkpoint when there is one, else estimated."""
        args = self.args
        remaining_steps = range(first_step + 1, args.max_train_steps + 1)
        to_write = sum(
            1 for step in remaining_steps if step % args.checkpointing_steps == 0 or step == args.max_train_steps
        )
        present = len(list_checkpoints(self.root))
        limit = args.checkpoints_total_limit
        count = to_write if limit is None else min(to_write, max(limit + 1 - present, 1))
        latest = self.latest()
        size = directory_bytes(latest) if latest is not None else self.estimated_bytes(num_trainable_weights)
        return f"{count} checkpoint(s) of {gib(size)}", count * size

    # ---------------------------------------------------------------- resume
    def resume_point(self, samples_per_step: int) -> Path | None:
        """The checkpoint this run continues from (``args.resume_from_checkpoint``), or None to start fresh; called
        before any weight loads, so that a run that cannot continue stops at once.

        Checkpoints already in ``root`` must come from a run with this run's settings (RESUMABLE_SETTINGS
        aside): resuming or overwriting another run's checkpoints is an error naming what differs. A
        checkpoint given by path from elsewhere is a deliberate choice: differences are only logged, but for those
        that store the optimizer's state another way (OPTIMIZER_STATE_SETTINGS), which it could not load. The
        checkpoint must suit this run's training mode (``check_mode``); other samples per optimizer step
        are logged (``samples_per_step_change``).
        """
        args = self.args
        own = self.latest()
        if own is not None:
            changed = self._changes_from(own, samples_per_step)
            if changed:
                raise ConfigError(
                    f"{self.root} holds checkpoints of a run with other settings ({own.name}): "
                    f"{describe_changes(changed, args.lr_scheduler)}. Restore these settings to continue that run, "
                    f"or set args.output_dir to another directory (or delete {self.root}) to start a new one"
                )
        choice = args.resume_from_checkpoint
        if choice is None or (choice == LATEST_CHECKPOINT and own is None):
            return None
        if choice == LATEST_CHECKPOINT:
            path = own
        else:
            path = Path(choice)
            if not (path / TRAINER_STATE).is_file():
                raise ConfigError(f"args.resume_from_checkpoint = {choice!r} is not a complete checkpoint directory")
            changed = self._changes_from(path, samples_per_step)
            unreadable = {name: changed[name] for name in OPTIMIZER_STATE_SETTINGS & changed.keys()}
            if unreadable:
                restore = ", ".join(f"args.{name} = {saved!r}" for name, (saved, _) in sorted(unreadable.items()))
                raise ConfigError(
                    f"args.resume_from_checkpoint = {choice!r}: its optimizer state was written under other settings "
                    f"({describe_changes(unreadable, args.lr_scheduler)}), which store it another way, so this run "
                    f"cannot load it. Set {restore} to resume it, or args.resume_from_checkpoint = None to start anew"
                )
            if changed:
                logger.warning(
                    "resuming %s with other settings: %s", path, describe_changes(changed, args.lr_scheduler)
                )
        self.check_mode(path)
        change = samples_per_step_change(
            self.saved_config(path), self.trainer_state(path), args, self.accelerator.num_processes, samples_per_step
        )
        if change:
            logger.warning("resuming %s with other samples per step: %s", path, change)
        return path

    def _changes_from(self, path: Path, samples_per_step: int) -> dict[str, tuple]:
        return changed_settings(self.args, self.saved_config(path), self.trainer_state(path), samples_per_step)

    def check_mode(self, path: Path) -> None:
        """Refuse, before any weight loads, a checkpoint that this run's training mode cannot read: another
        mode's (each stores the weights its own way), or DeepSpeed's on another number of processes (DeepSpeed
        cannot re-split ZeRO's optimizer state)."""
        state = self.trainer_state(path)
        saved_mode = state.get(TRAINING_MODE, TrainingMode.DATA_PARALLEL.value)
        mode = training_mode(self.accelerator)
        if saved_mode != mode.value:
            raise ConfigError(
                f"{path} was written under {saved_mode}, this run is launched under {mode.value}: each mode stores the "
                f"weights its own way. Launch with the checkpoint's mode ({LAUNCH_SETTING[saved_mode]}; any "
                "NUM_PROCESSES, see thematrix/accelerate_configs/README.md), or set args.resume_from_checkpoint = None"
            )
        saved_processes = state.get(NUM_PROCESSES, self.accelerator.num_processes)
        if mode is TrainingMode.DEEPSPEED and saved_processes != self.accelerator.num_processes:
            raise ConfigError(
                f"{path} was written by DeepSpeed ZeRO-2 on {saved_processes} processes, this run has "
                f"{self.accelerator.num_processes}: DeepSpeed cannot re-split ZeRO's optimizer state over another "
                f"number of processes. Resume with NUM_PROCESSES={saved_processes}; to change the GPU count, train "
                "under FSDP (ACCELERATE_CONFIG=fsdp), whose checkpoints resume on any number of processes"
            )

    def mode_state(self) -> dict[str, Any]:
        """What ``trainer_state.json`` records of the training mode, for ``check_mode``."""
        return {TRAINING_MODE: training_mode(self.accelerator).value, NUM_PROCESSES: self.accelerator.num_processes}

    @staticmethod
    def trainer_state(path: Path) -> dict[str, Any]:
        return json.loads((path / TRAINER_STATE).read_text())

    @staticmethod
    def saved_config(path: Path) -> dict[str, Any]:
        return json.loads((path / RESOLVED_CONFIG).read_text())

    def load(self, path: Path, lr_scheduler) -> dict[str, Any]:
        """Restore the state saved in ``path`` (a ``resume_point``); returns its trainer state. A changed
        ``args.learning_rate`` takes effect at the step the schedule stands at; fp16's loss scale, which a checkpoint
        written in another precision lacks, starts afresh."""
        scaler = self.accelerator.scaler
        fresh_loss_scale = scaler is not None and not (path / SCALER_NAME).is_file()
        if fresh_loss_scale:
            logger.warning(
                "%s holds no loss scale (%s: it was written without fp16): the loss scale starts afresh at %g",
                path,
                SCALER_NAME,
                scaler.get_scale(),
            )
            self.accelerator.scaler = None  # accelerate would read the missing file
        try:
            self.accelerator.load_state(str(path))
        finally:
            self.accelerator.scaler = scaler
        scheduler = lr_scheduler.scheduler
        if any(base != self.args.learning_rate for base in scheduler.base_lrs):
            logger.warning(
                "learning rate %g -> %g from step %d on",
                scheduler.base_lrs[0],
                self.args.learning_rate,
                scheduler.last_epoch,
            )
            scheduler.base_lrs = [self.args.learning_rate] * len(scheduler.base_lrs)
            scheduler.last_epoch -= 1  # take the current step again, with the new base rate
            scheduler.step()
        state = self.trainer_state(path)
        logger.info("resumed from %s at step %d", path, state["global_step"])
        return state
