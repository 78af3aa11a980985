"""A second game end to end: LunarLander footage recorded here, with keys that are not the car's, through all four
stages as users run them (the bash launchers with the tiny configs, fuse_lora_weights.py, every inference script)
with no setting but paths; and what a model directory then decides for the stages and scripts after it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stage1 import fuse_lora_weights
from stage1 import inference as stage1_inference
from stage2 import inference as stage2_inference
from stage2.train_text_to_video_sft import InteractiveTrainer
from stage2.training.arguments import SftArgs
from stage3 import inference as stage3_inference
from stage4 import inference as stage4_inference
from stage4.train_text_to_video_scm import ScmTrainer
from stage4.training.arguments import ScmArgs
from tests.conftest import tiny_run_args
from tests.launching import LAUNCH_TIMEOUT_S, REPO_ROOT, finish, launch
from thematrix.config import ConfigError
from thematrix.controls import GAMES_DIR, VOCABULARY_FILE, ControlError, load_vocabulary
from thematrix.data.gym_recorder import INDEX_FILE
from thematrix.model_dir import GenerationDefaults
from thematrix.models.interactive_transformer import model_vocabulary
from thematrix.training import trainer as trainer_module
from thematrix.video import read_video_info

# Box2D's SWIG bindings warn on import under Python 3.11+; nothing to act on here.
pytestmark = pytest.mark.filterwarnings("ignore:builtin type [Ss]wig:DeprecationWarning")
# Random play crashes or lands in 1 to 4 s: short clips at the game's own rate, one per episode (about 70% of
# episodes last long enough; these 6 give 4 clips of 33 frames).
FOOTAGE_FPS = 25
RECORDING = [
    "--game",
    str(GAMES_DIR / "lunar_lander.json"),
    "--fps",
    str(FOOTAGE_FPS),
    "--frames_per_clip",
    "33",
    "--resolution",
    "48x64",
    "--clips_per_episode",
    "1",
    "--episodes",
    "6",
    "--seed",
    "0",
]
# The tiny configs' runs, cut to two steps with a checkpoint and a validation at the end: the game needs no setting.
RUN_LENGTH = ["--max_train_steps", "2", "--checkpointing_steps", "2", "--validation_steps", "2"]
STAGES = {  # stage: (launcher, tiny config)
    "stage1": ("train_text_to_video_lora.sh", "lora_config_tiny.py"),
    "stage2": ("train_text_to_video_sft.sh", "sft_config_tiny.py"),
    "stage3": ("train_text_to_video_sft.sh", "sft_config_tiny.py"),
    "stage4": ("train_text_to_video_scm.sh", "scm_config_tiny.py"),
}
# A stage-3 model's window in the tiny config: 2 groups of 2 latent frames.
TINY_WINDOW = (2, 2)
FEW_STEPS = ["--num_inference_steps", "2"]  # a short look at the model, not a setting of the game


@pytest.fixture(scope="module")
def lander(tmp_path_factory) -> Path:
    """LunarLander footage: clips, index.json and the game's vocabulary.json."""
    root = tmp_path_factory.mktemp("lander")
    subprocess.run(
        [sys.executable, "data/record_gym.py", *RECORDING, "--output_dir", str(root)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=LAUNCH_TIMEOUT_S,
    )
    return root


def train(stage: str, model: Path, footage: Path, output_dir: Path) -> Path:
    """``bash stageN/train_*.sh --config training/*_config_tiny.py`` with the paths and RUN_LENGTH."""
    launcher, config = STAGES[stage]
    log = output_dir.with_suffix(".log")
    process = launch(
        REPO_ROOT / stage / launcher,
        [
            "--config",
            f"training/{config}",
            "--pretrained_model_name_or_path",
            str(model),
            "--data_root",
            str(footage),
            "--index_file",
            str(footage / INDEX_FILE),
            "--output_dir",
            str(output_dir),
            *RUN_LENGTH,
        ],
        log,
    )
    code, output = finish(process, log)
    assert code == 0, output[-4000:]
    return output_dir


@pytest.fixture(scope="module")
def chain(tiny_model_dir, lander, tmp_path_factory) -> dict[str, Path]:
    """The model directory (or LoRA folder) of each stage, trained one after the other on the footage."""
    root = tmp_path_factory.mktemp("chain")
    runs = {"stage1": train("stage1", tiny_model_dir, lander, root / "stage1-lora")}
    runs["fused"] = fuse_lora_weights.fuse_lora(tiny_model_dir, runs["stage1"], root / "stage1-fused")
    model = runs["fused"]
    for stage in ("stage2", "stage3", "stage4"):
        runs[stage] = model = train(stage, model, lander, root / stage) / "model"
    return runs


def test_every_stage_trains_on_the_footage_and_records_the_game(chain, lander):
    vocabulary = load_vocabulary(lander / VOCABULARY_FILE)
    first_caption = json.loads((lander / INDEX_FILE).read_text())["list"][0]["caption"]
    for stage in ("stage1", "fused", "stage2", "stage3", "stage4"):
        recorded = GenerationDefaults.load(chain[stage])
        window = (recorded.num_groups, recorded.group_size)
        assert (recorded.fps, recorded.prompt) == (FOOTAGE_FPS, first_caption), stage
        assert window == (TINY_WINDOW if stage in ("stage3", "stage4") else (None, None)), stage
    for stage in ("stage2", "stage3", "stage4"):
        assert model_vocabulary(chain[stage]) == vocabulary, stage
        run = chain[stage].parent
        settings = json.loads((run / "config.json").read_text())
        assert (settings["control_tokens"], settings["fps"]) == (list(vocabulary.tokens), FOOTAGE_FPS), stage
        # The validation controls are the game's own, every token in turn.
        assert set(settings["validation_controls"]) == set(vocabulary.tokens), stage
        assert (run / "validation" / "step-2" / "prompt-0.mp4").is_file(), stage


@pytest.mark.parametrize(
    "script, model, options",
    [
        (stage1_inference, "fused", FEW_STEPS),
        (stage2_inference, "stage2", FEW_STEPS),
        (stage3_inference, "stage3", ["--groups", "2", *FEW_STEPS]),
        (stage4_inference, "stage4", ["--groups", "2"]),
    ],
    ids=["stage1", "stage2", "stage3", "stage4"],
)
def test_every_inference_script_generates_the_game_at_its_rate(chain, lander, tmp_path, script, model, options):
    dataset = (
        ["--data_root", str(lander), "--index_file", str(lander / INDEX_FILE)] if model in ("stage3", "stage4") else []
    )
    output = script.main(["--model_dir", str(chain[model]), *dataset, *options, "--output", str(tmp_path / "game.mp4")])
    recorded = GenerationDefaults.load(chain[model])
    frames, fps, height, width = read_video_info(output)
    assert (fps, height, width) == (recorded.fps, recorded.height, recorded.width)
    assert frames == (recorded.num_frames if model in ("fused", "stage2") else 2 * 4 * TINY_WINDOW[1])


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fails a test whose run loads a model's weights: what it checks must be refused before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was reported")

    monkeypatch.setattr(trainer_module, "load_components", refuse)


def test_a_setting_that_contradicts_the_model_is_refused_naming_both_values(chain, lander, tmp_path, nothing_loads):
    with pytest.raises(ConfigError, match=r"--fps is 10, but the model at .*stage4/model was trained with 25"):
        stage4_inference.main(["--model_dir", str(chain["stage4"]), "--initial_video", "any.mp4", "--fps", "10"])
    args = tiny_run_args(
        ScmArgs(),
        chain["stage3"],
        (lander, lander / INDEX_FILE),
        tmp_path,
        num_noise_groups=4,
        fps=None,
        frame_buckets=None,
    )
    with pytest.raises(
        ConfigError, match=r"args.num_noise_groups is 4, but the model at .*stage3/model was trained with 2"
    ):
        ScmTrainer(args).setup()


def test_stage2_takes_the_footages_controls_and_refuses_others_before_loading(
    tiny_model_dir, tiny_dataset, tmp_path, nothing_loads
):
    """The settings and the footage's vocabulary.json must agree; footage with neither is told what to write;
    validation controls must be the game's."""
    other = dict(control_tokens=("UP", "DOWN"), control_phrases=("Up.", "Down."))
    with pytest.raises(
        ControlError, match=r"has the controls \{'UP': 'Up.', 'DOWN': 'Down.'\}, but .*vocabulary.json has"
    ):
        InteractiveTrainer(tiny_run_args(SftArgs(), tiny_model_dir, tiny_dataset, tmp_path / "other", **other)).setup()
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("clip_0.mp4", INDEX_FILE):
        (bare / name).write_bytes((tiny_dataset[0] / name).read_bytes())
    with pytest.raises(ConfigError, match=r"no control vocabulary for the footage: write .*bare/vocabulary.json"):
        InteractiveTrainer(
            tiny_run_args(SftArgs(), tiny_model_dir, (bare, bare / INDEX_FILE), tmp_path / "bare-run")
        ).setup()
    args = tiny_run_args(
        SftArgs(), tiny_model_dir, tiny_dataset, tmp_path / "controls", validation_controls=("UP", "FLY")
    )
    with pytest.raises(ConfigError, match="args.validation_controls: unknown control token 'FLY'"):
        InteractiveTrainer(args).setup()
