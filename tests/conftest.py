"""Shared fixtures: the tiny base model and a small synthetic clip dataset, built once per session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from stage1.training.arguments import LoraArgs
from stage3.cogvideox.pipeline_cogvideox import SwinDPMPipeline
from stage3.cogvideox.scheduler import SwinScheduler
from thematrix.base_model import build_base_model
from thematrix.controls import VOCABULARY_FILE, ControlVocabulary
from thematrix.model_dir import load_components, save_model_dir
from thematrix.models import (
    InteractiveCogVideoXTransformer3DModel,
    compute_control_embeddings,
)
from thematrix.precompile import PRECOMPILED_DIR_VARIABLE
from thematrix.training.checkpoint import list_checkpoints
from thematrix.video import write_mp4

TINY_HEIGHT, TINY_WIDTH = 48, 64
# Frames of each test clip: one Swin-DPM training clip of the tiny window, 1 + 4 * (2 history + 2 x 2) latent frames.
CLIP_FRAMES = 25
TRAIN_FRAMES = 17  # the clip length stages 1 and 2 train on in tests: 5 latent frames
CLIP_FPS = 10
NUM_CLIPS = 4
# The test clips' game: a square steered by nine keys, a vocabulary of the tests' own.
TEST_VOCABULARY = ControlVocabulary(
    ("RIGHT", "LEFT", "UP", "DOWN", "JUMP", "DUCK", "STAY", "FIRE", "RUN"),
    (
        "The square moves right.",
        "The square moves left.",
        "The square moves up.",
        "The square moves down.",
        "The square jumps.",
        "The square ducks.",
        "The square stays where it is.",
        "The square fires.",
        "The square runs.",
    ),
)


@pytest.fixture(autouse=True)
def precompiled_folder(tmp_path_factory, monkeypatch) -> Path:
    """Each test's compiled graphs in a folder of its own (thematrix/precompile.py), not the user's cache."""
    folder = tmp_path_factory.mktemp("precompiled")
    monkeypatch.setenv(PRECOMPILED_DIR_VARIABLE, str(folder))
    return folder


@pytest.fixture
def fresh_compiler():
    """Compiled code as a new process has it: the variants other tests compiled of the same blocks do not count
    against dynamo's recompile limit (a fullgraph compile fails past it)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "base-tiny"
    build_base_model("tiny", path, seed=0)
    return path


def moving_square_clip(index: int, num_frames: int, height: int, width: int) -> np.ndarray:
    """A square that moves right by one pixel a frame over a background of per-clip colour."""
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    frames[...] = (40 + 50 * index, 90, 140)
    size = height // 4
    for frame_index in range(num_frames):
        left = (frame_index + 4 * index) % (width - size)
        frames[frame_index, size : 2 * size, left : left + size] = (250, 40, 40)
    return frames


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """(data_root, index_file) of NUM_CLIPS clips, one control token per frame, with TEST_VOCABULARY as the data
    root's vocabulary.json."""
    root = tmp_path_factory.mktemp("clips")
    TEST_VOCABULARY.save(root / VOCABULARY_FILE)
    entries = []
    tokens = TEST_VOCABULARY.tokens
    for index in range(NUM_CLIPS):
        name = f"clip_{index}.mp4"
        write_mp4(moving_square_clip(index, CLIP_FRAMES, TINY_HEIGHT, TINY_WIDTH), root / name, fps=CLIP_FPS)
        controls = [tokens[(index + frame // 4) % len(tokens)] for frame in range(CLIP_FRAMES)]
        entries.append(
            {
                "path": name,
                "caption": f"A red square slides right over a plain background, clip {index}.",
                "control_signal_seq": ",".join(controls),
                "valid_frame_idx": 0,
            }
        )
    index_file = root / "index.json"
    index_file.write_text(json.dumps({"list": entries}))
    return root, index_file


def tiny_run_args(args, model_dir, dataset, output_dir, **overrides):
    """``args`` (any stage's settings) set up for a fast, deterministic CPU run on the tiny model and clips."""
    data_root, index_file = dataset
    args.pretrained_model_name_or_path = str(model_dir)
    args.data_root, args.index_file, args.output_dir = str(data_root), str(index_file), str(output_dir)
    args.height, args.width, args.fps, args.frame_buckets = TINY_HEIGHT, TINY_WIDTH, CLIP_FPS, (TRAIN_FRAMES,)
    args.learning_rate, args.lr_warmup_steps, args.lr_scheduler = 1e-2, 0, "constant"
    args.checkpointing_steps, args.validation_steps = 1000, 0
    args.report_to, args.dataloader_num_workers, args.gradient_checkpointing = "none", 0, False
    args.cache_latents, args.seed = True, 0
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


# Runs that differ only in the order of float sums (a batch of two vs two accumulated batches or two processes)
# agree to rounding, which AdamW's m / sqrt(v) magnifies where an element's gradients nearly cancel. A hundredth of
# one step (the learning rate) bounds that and is far below what a wrong sample, noise draw or gradient scale moves.
ADAM_ROUNDING_STEPS = 1e-2

# The stage-1 runs of the trainer's own tests (checkpoints, run safety).
TINY_LORA_RANK = 4
TINY_RUN_STEPS = 3


@pytest.fixture(scope="module")
def stage1_cache_dir(tmp_path_factory):
    """One latent cache for the stage-1 runs of a test module: they share the model and the clips."""
    return str(tmp_path_factory.mktemp("stage1-cache"))


@pytest.fixture
def lora_args(tiny_model_dir, tiny_dataset, stage1_cache_dir, tmp_path):
    """``lora_args(output, **settings)``: stage-1 settings of a TINY_RUN_STEPS-step run into ``tmp_path / output``
    that checkpoints every step."""

    def make(output="run", **overrides):
        settings = dict(
            rank=TINY_LORA_RANK,
            lora_alpha=float(TINY_LORA_RANK),
            max_train_steps=TINY_RUN_STEPS,
            checkpointing_steps=1,
            cache_dir=stage1_cache_dir,
        )
        return tiny_run_args(LoraArgs(), tiny_model_dir, tiny_dataset, tmp_path / output, **{**settings, **overrides})

    return make


CONTROL_MODULE_SEED = 1
CONTROL_GATE_STD = 0.5  # random adaLN gates for the control blocks, which start at zero, so controls change the output


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tiny model's ops are too small to gain from threads; with two threads on a busy 2-core machine,
    OpenMP's spin-waits slow the suite down several times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    """A tiny stage-3 pipeline on the tiny base model, whose control blocks have random (non-zero) gates.

    The same weights whatever ran before: the new modules draw their initial weights from torch's global generator.
    """
    components = load_components(tiny_model_dir, torch.float32, SwinScheduler, CogVideoXTransformer3DModel)
    table = compute_control_embeddings(TEST_VOCABULARY, components["tokenizer"], components["text_encoder"])
    torch.manual_seed(CONTROL_MODULE_SEED)
    transformer = InteractiveCogVideoXTransformer3DModel.from_base(components["transformer"], TEST_VOCABULARY, table)
    generator = torch.Generator().manual_seed(CONTROL_MODULE_SEED)
    with torch.no_grad():
        for block in transformer.control_blocks:
            for parameter in block.norm.linear.parameters():
                parameter.normal_(0, CONTROL_GATE_STD, generator=generator)
    return SwinDPMPipeline(**dict(components, transformer=transformer))


@pytest.fixture(scope="module")
def model_dir(pipeline, tiny_model_dir, tmp_path_factory):
    """``pipeline`` saved as a model directory, as stage 3 training writes it."""
    return save_model_dir(pipeline.transformer, tiny_model_dir, tmp_path_factory.mktemp("stage3") / "model")


UNCHANGED_COMPONENTS = ("tokenizer", "text_encoder", "vae", "scheduler")


def assert_components_unchanged(source: Path, written: Path) -> None:
    """``written`` holds ``source``'s non-transformer components byte for byte, and its model index otherwise."""
    for component in UNCHANGED_COMPONENTS:
        files = sorted(path.relative_to(source) for path in (source / component).rglob("*") if path.is_file())
        assert files == sorted(path.relative_to(written) for path in (written / component).rglob("*") if path.is_file())
        for name in files:
            assert (source / name).read_bytes() == (written / name).read_bytes(), name
    index, written_index = (json.loads((path / "model_index.json").read_text()) for path in (source, written))
    assert {key: value for key, value in written_index.items() if key != "transformer"} == {
        key: value for key, value in index.items() if key != "transformer"
    }


class KilledAtStep(Exception):
    """Stands for a kill (power loss, preemption) in the middle of a training step."""


def killed_during_step(trainer_class: type, kill_at: int) -> type:
    """``trainer_class`` that dies in the middle of optimizer step ``kill_at``, after the checkpoints before it."""

    class Killed(trainer_class):
        def compute_loss(self, batch, first_sample_position):
            if self.global_step + 1 == kill_at:
                raise KilledAtStep
            return super().compute_loss(batch, first_sample_position)

    return Killed


def whole_and_resumed(trainer_class: type, args_for, kill_at: int, killed_leaves: list[str]):
    """``trainer_class`` run whole on ``args_for("whole")``, and on ``args_for("killed")`` killed during step ``kill_at``
    (leaving the checkpoints named ``killed_leaves``), then run again with the same settings, as a user reruns the
    command: the (whole, resumed) trainers, their run folders named so under the one ``args_for`` builds."""
    whole = trainer_class(args_for("whole"))
    whole.train()
    killed = killed_during_step(trainer_class, kill_at)(args_for("killed"))
    with pytest.raises(KilledAtStep):
        killed.train()
    assert [path.name for path in list_checkpoints(Path(killed.args.output_dir) / "checkpoints")] == killed_leaves
    resumed = trainer_class(args_for("killed"))
    resumed.train()
    return whole, resumed
