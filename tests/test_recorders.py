"""Recorders: the generic Gymnasium recorder, the car as a thin layer on it, and a second game with its own keys."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import decord
import numpy as np
import pytest

from thematrix.controls import GAMES_DIR, VOCABULARY_FILE, ControlError, load_vocabulary
from thematrix.data.gym_recorder import INDEX_FILE, load_game
from thematrix.data.index import load_index
from thematrix.data.validate import main as validate_main

REPO_ROOT = Path(__file__).resolve().parents[1]
CAR_RACING_GAME_FILE = GAMES_DIR / "car_racing.json"
LUNAR_LANDER_GAME_FILE = GAMES_DIR / "lunar_lander.json"
RECORD_TIMEOUT_S = 120
# Box2D's SWIG bindings warn on import under Python 3.11+; nothing to act on here.
pytestmark = pytest.mark.filterwarnings("ignore:builtin type [Ss]wig:DeprecationWarning")
TINY = ["--resolution", "48x72", "--seed", "3"]


def record_gym(argv: list[str]) -> None:
    runpy.run_path(str(REPO_ROOT / "data" / "record_gym.py"))["main"](argv)


def record_carracing(argv: list[str]) -> None:
    runpy.run_path(str(REPO_ROOT / "data" / "record_carracing.py"))["main"](argv)


def recorded(output_dir: Path) -> tuple[list[dict], list]:
    """The index entries, and the samples that load_index accepts with the footage's own vocabulary."""
    entries = json.loads((output_dir / INDEX_FILE).read_text())["list"]
    samples, problems = load_index(output_dir / INDEX_FILE, output_dir)
    assert problems == [], problems
    return entries, samples


def run_script(script: str, *flags: str) -> None:
    """Run a repository script as a user would, in its own process; fail with its output if it fails."""
    command = [sys.executable, script, *flags]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=RECORD_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr


def test_carracing_recorder_writes_a_valid_dataset_with_the_cars_vocabulary(tmp_path):
    run_script(
        "data/record_carracing.py",
        *("--output_dir", str(tmp_path), "--episodes", "1", "--clips_per_episode", "2", "--frames_per_clip", "9"),
        *TINY,
    )
    entries, samples = recorded(tmp_path)
    assert [item["path"] for item in entries] == ["videos/episode_0000_clip_00.mp4", "videos/episode_0000_clip_01.mp4"]
    assert all(set(item) == {"path", "caption", "control_signal_seq", "valid_frame_idx"} for item in entries)
    assert load_vocabulary(tmp_path / VOCABULARY_FILE) == load_game(CAR_RACING_GAME_FILE).vocabulary
    assert len(samples) == 2
    for sample in samples:
        assert (sample.num_frames, sample.fps, sample.height, sample.width) == (9, 10.0, 48, 72)
        assert len(sample.frame_controls) == sample.num_frames
        assert sample.caption.startswith("A top-down view of a red race car on ")
    assert validate_main(["--data_root", str(tmp_path), "--index_file", str(tmp_path / INDEX_FILE)]) == 0


def test_parallel_recording_gives_the_same_footage_whatever_the_process_count(tmp_path):
    """learning/record_footage.py: the footage depends on the seed and the episodes, not on the machine's cores."""
    footage = {}
    for processes in (1, 2):
        output_dir = tmp_path / f"processes_{processes}"
        run_script(
            "learning/record_footage.py",
            *("--output_dir", str(output_dir), "--episodes", "2", "--processes", str(processes), "--"),
            *("--clips_per_episode", "1", "--frames_per_clip", "5", *TINY),
        )
        entries, _ = recorded(output_dir)
        footage[processes] = {
            Path(item["path"]).name: (
                item["caption"],
                item["control_signal_seq"],
                (output_dir / item["path"]).read_bytes(),
            )
            for item in entries
        }
    assert sorted(footage[2]) == ["episode_0000_clip_00.mp4", "episode_0001_clip_00.mp4"]
    assert footage[1] == footage[2]


def test_the_track_driver_keeps_the_car_on_the_track_more_than_the_random_one(tmp_path):
    on_track = {}
    for driver in ("random", "track"):
        output_dir = tmp_path / driver
        record_carracing(
            ["--output_dir", str(output_dir), "--episodes", "2", "--clips_per_episode", "2", "--frames_per_clip", "17"]
            + [*TINY, "--driver", driver]
        )
        entries, _ = recorded(output_dir)
        on_track[driver] = sum("grass beside" not in entry["caption"] for entry in entries)
    # Measured with Box2D 2.3.10 (seed 3): 1 of the 4 clips with the random driver, 4 of 4 with the track driver.
    assert on_track["track"] >= 3 > on_track["random"]


def test_track_steering_turns_towards_the_track_ahead():
    """A car at the origin facing +y (Box2D's body faces its local +y), the track bending away to one side."""
    car_racing = runpy.run_path(str(REPO_ROOT / "data" / "record_carracing.py"))
    for side, sign in ((-1, -1), (1, 1)):  # tiles to the left (-x) need left steering (negative)
        track = [(0.0, 0.0, side * index, float(index)) for index in range(20)]
        hull = SimpleNamespace(position=(0.0, 0.0), angle=0.0)
        env = SimpleNamespace(unwrapped=SimpleNamespace(car=SimpleNamespace(hull=hull), track=track))
        steering = car_racing["track_steering"](env)
        assert np.sign(steering) == sign and abs(steering) == 1.0  # 45 degrees off: past full lock
    straight = SimpleNamespace(position=(0.0, 0.0), angle=0.0)
    track = [(0.0, 0.0, 0.0, float(index)) for index in range(20)]
    env = SimpleNamespace(unwrapped=SimpleNamespace(car=SimpleNamespace(hull=straight), track=track))
    assert car_racing["track_steering"](env) == 0.0


def test_carracing_domain_randomize_changes_the_colours_and_names_none(tmp_path):
    first_frames = {}
    for randomize in (False, True):
        output_dir = tmp_path / str(randomize)
        record_carracing(
            [
                "--output_dir",
                str(output_dir),
                "--episodes",
                "1",
                "--clips_per_episode",
                "1",
                "--frames_per_clip",
                "5",
                *TINY,
            ]
            + ["--domain_randomize"] * randomize
        )
        entries, _ = recorded(output_dir)
        assert ("grey track" in entries[0]["caption"]) != randomize
        reader = decord.VideoReader(str(output_dir / entries[0]["path"]))
        first_frames[randomize] = reader[0].asnumpy().reshape(-1, 3).mean(axis=0)
    assert np.abs(first_frames[True] - first_frames[False]).max() > 10, "the same track, in other colours"


def test_car_actions_give_their_tokens():
    """The car's game file and its driver's random strengths both map back to the token they stand for."""
    car = runpy.run_path(str(REPO_ROOT / "data" / "record_carracing.py"))
    game = load_game(CAR_RACING_GAME_FILE)
    rng = np.random.default_rng(0)
    for token in game.vocabulary.tokens:
        assert car["action_to_token"](np.asarray(game.actions[token])) == token
        assert all(car["action_to_token"](car["token_to_action"](token, rng)) == token for _ in range(20))


def test_a_second_game_is_recorded_with_its_own_vocabulary_and_nothing_of_the_car(tmp_path):
    run_script(
        "data/record_gym.py",
        *("--game", str(LUNAR_LANDER_GAME_FILE), "--output_dir", str(tmp_path), "--episodes", "2"),
        *("--clips_per_episode", "1", "--frames_per_clip", "9", "--fps", "25", *TINY),
    )
    entries, samples = recorded(tmp_path)
    game = load_game(LUNAR_LANDER_GAME_FILE)
    vocabulary = load_vocabulary(tmp_path / VOCABULARY_FILE)
    assert vocabulary == game.vocabulary and len(samples) == len(entries) == 2
    assert all((sample.num_frames, sample.fps) == (9, 25.0) for sample in samples)
    assert {token for sample in samples for token in sample.frame_controls} <= set(vocabulary.tokens)
    assert all(entry["caption"].startswith("A side view of a purple lunar lander") for entry in entries)
    car = load_game(CAR_RACING_GAME_FILE).vocabulary
    assert not set(car.tokens) & set(vocabulary.tokens) and not set(car.phrases) & set(vocabulary.phrases)
    assert "car" not in (tmp_path / INDEX_FILE).read_text().lower().split()
    assert validate_main(["--data_root", str(tmp_path), "--index_file", str(tmp_path / INDEX_FILE)]) == 0


def test_a_game_from_flags_with_continuous_actions(tmp_path):
    """Pendulum draws PNG sprites: run as a script, so the recorder's import order (pygame before decord) counts."""
    controls = [
        ("CCW", "[-2.0]", "The pendulum is pushed counter-clockwise."),
        ("CW", "[2.0]", "The pendulum is pushed clockwise."),
        ("FREE", "[0.0]", "The pendulum swings freely."),
    ]
    run_script(
        "data/record_gym.py",
        *("--env", "Pendulum-v1", "--output_dir", str(tmp_path), "--episodes", "1", "--clips_per_episode", "2"),
        *("--frames_per_clip", "9", "--fps", "10", *TINY),
        *(value for control in controls for value in ("--control", *control)),
    )
    entries, samples = recorded(tmp_path)
    assert load_vocabulary(tmp_path / VOCABULARY_FILE).tokens == ("CCW", "CW", "FREE") and len(samples) == 2
    assert entries[0]["caption"].startswith("Gameplay footage, the pendulum ")


def write_game(tmp_path, **changes) -> Path:
    content = json.loads(LUNAR_LANDER_GAME_FILE.read_text())
    content.update(changes)
    path = tmp_path / "game.json"
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize(
    "changes, flags, message",
    [
        (
            {"actions": {"IDLE": 0, "LEFT": 1, "MAIN": 7, "RIGHT": 3}},
            [],
            "actions.MAIN: 7 is not an action of LunarLander-v3",
        ),
        ({"actions": {"IDLE": 0, "LEFT": 1, "MAIN": 2}}, [], "actions: tokens ['RIGHT'] have no action"),
        ({"caption": "A lander {moves}."}, [], "caption: 'A lander {moves}.' has placeholders ['moves']"),
        ({"warmup": {"seconds": 1.0, "token": "UP"}}, [], "warmup: hold a token of the vocabulary"),
        ({"env_id": "NoSuchGame-v0"}, [], "env_id: 'NoSuchGame-v0' cannot be made"),
        ({"action": {}}, [], "'action' is not a key of this file. Fix: remove it; did you mean 'actions'?"),
        (
            {},
            ["--fps", "20"],
            "--fps 20: LunarLander-v3 renders at 50 fps, so a clip's frame rate must divide it. Fix: pass "
            "one of [1, 2, 5, 10, 25, 50]",
        ),
    ],
)
def test_game_mistakes_are_errors_that_say_the_fix(tmp_path, changes, flags, message):
    game_file = write_game(tmp_path, **changes)
    with pytest.raises(ControlError) as error:
        record_gym(["--game", str(game_file), "--output_dir", str(tmp_path / "out"), "--episodes", "1", *flags])
    assert message in str(error.value)
    assert not (tmp_path / "out" / INDEX_FILE).exists()
