"""Record CarRacing-v3 footage with per-frame controls as clips + an index file + the car's vocabulary.

    python data/record_carracing.py --output_dir outputs/carracing --episodes 8 --clips_per_episode 2

The generic Gymnasium recorder (thematrix/data/gym_recorder.py) with the car's game file
(data/games/car_racing.json) and what is the car's own: a scripted driver that holds one control
per segment with random strengths (drive, brake or coast; straight, left or right), drawn so that
every token occurs, and captions that say whether the car is on the track. The env simulates 50
steps per second; its camera zooms in during the first second, which is skipped with gas held.
``--domain_randomize`` gives every episode random track and grass colours. See data/README.md.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pygame  # noqa: F401 - before decord loads: see thematrix/data/gym_recorder.py

from thematrix.cli import run
from thematrix.controls import GAMES_DIR
from thematrix.data.gym_recorder import (
    MOTION_SEPARATOR,
    MOTIONS_FIELD,
    GymRecorder,
    add_recording_arguments,
    check_recording_arguments,
    load_game,
    main_motions,
)

CAR_RACING_GAME_FILE = GAMES_DIR / "car_racing.json"
DEFAULT_FPS = 10
# Action = (steer in [-1, 1] with -1 full left, gas in [0, 1], brake in [0, 1]).
STEER, GAS, BRAKE = 0, 1, 2
STEER_THRESHOLD = 0.1
GAS_THRESHOLD = 0.1
BRAKE_THRESHOLD = 0.1

# The driver draws a strength per segment so the footage covers gentle and hard inputs.
STEER_RANGE = (0.3, 1.0)
GAS_RANGE = (0.2, 0.8)
BRAKE_RANGE = (0.2, 0.7)
# The segments are drawn from shuffled bags holding every token once, plus the driving tokens
# again: every token appears within each bag, and the car spends most time on the move.
EXTRA_DRIVING_TOKENS = ("D", "DL", "DR")

# The game file's caption says the car is on its grey track; these replace it when the wheels were
# mostly on the grass, and with --domain_randomize (random colours of track and grass) they name no colours.
CAPTION_OFF_TRACK = "A top-down view of a red race car on green grass beside a grey track, {motions}."
CAPTION_ON_TRACK_RANDOM_COLOURS = "A top-down view of a red race car on a track surrounded by grass, {motions}."
CAPTION_OFF_TRACK_RANDOM_COLOURS = "A top-down view of a red race car on the grass beside a track, {motions}."
# The scene caption says "on the track" when at least this share of frames has a wheel on it.
ON_TRACK_SHARE = 0.5
# --driver track: the steering aims at the track tile this many tiles ahead of the nearest one, turning by this
# much per radian of heading error (full lock past half a radian). Random pedals keep the speeds varied.
TRACK_LOOKAHEAD_TILES = 6
TRACK_STEERING_GAIN = 2.0


def action_to_token(action: np.ndarray) -> str:
    """Pedal letter (D gas, B brake, N neither; gas wins if both) plus L/R for steering."""
    if action[GAS] > GAS_THRESHOLD:
        token = "D"
    elif action[BRAKE] > BRAKE_THRESHOLD:
        token = "B"
    else:
        token = "N"
    if action[STEER] < -STEER_THRESHOLD:
        token += "L"
    elif action[STEER] > STEER_THRESHOLD:
        token += "R"
    return token


def token_to_action(token: str, rng: np.random.Generator) -> np.ndarray:
    """A random action of the given control token, with magnitudes well past the thresholds."""
    action = np.zeros(3, dtype=np.float32)
    pedal, turn = token[0], token[1:]
    if pedal == "D":
        action[GAS] = rng.uniform(*GAS_RANGE)
    elif pedal == "B":
        action[BRAKE] = rng.uniform(*BRAKE_RANGE)
    if turn:
        action[STEER] = rng.uniform(*STEER_RANGE) * (-1 if turn == "L" else 1)
    return action


def track_steering(env: gym.Env) -> float:
    """The steering (-1 full left .. 1 full right) that points the car at the track a few tiles ahead."""
    game = env.unwrapped
    x, y = game.car.hull.position
    heading = game.car.hull.angle
    tiles = np.array([(tile[2], tile[3]) for tile in game.track])
    nearest = int(np.argmin(((tiles - (x, y)) ** 2).sum(axis=1)))
    target_x, target_y = tiles[(nearest + TRACK_LOOKAHEAD_TILES) % len(tiles)]
    forward_x, forward_y = -math.sin(heading), math.cos(heading)  # the car's body faces its local +y
    to_x, to_y = target_x - x, target_y - y
    # Positive: the target lies counter-clockwise (to the left) of the heading, which needs negative steering.
    error = math.atan2(forward_x * to_y - forward_y * to_x, forward_x * to_x + forward_y * to_y)
    return float(np.clip(-TRACK_STEERING_GAIN * error, -1.0, 1.0))


class ScriptedDriver:
    """Holds one control per segment of a random duration; segments come from shuffled bags of all tokens.

    With ``follow_track`` (``--driver track``) a segment's steering comes from it, frame by frame, except in a
    ``free_steering_share`` of the segments, which keep their drawn steering: the car stays on the track most of
    the time, where the pedals show in how fast the track scrolls, and still leaves it now and then. The token of a
    frame is then the action's (``action_to_token``).
    """

    def __init__(
        self,
        tokens: tuple[str, ...],
        rng: np.random.Generator,
        frame_seconds: float,
        hold_seconds: tuple[float, float],
        follow_track: Callable[[], float] | None = None,
        free_steering_share: float = 0.0,
    ):
        self.tokens, self.rng = tokens, rng
        self.frame_seconds, self.hold_seconds = frame_seconds, hold_seconds
        self.follow_track, self.free_steering_share = follow_track, free_steering_share
        self.bag: list[str] = []
        self.token, self.action = tokens[0], np.zeros(3, dtype=np.float32)
        self.frames_left = 0
        self.steers_freely = True

    def next(self) -> tuple[str, np.ndarray]:
        if self.frames_left == 0:
            if not self.bag:
                self.bag = [str(token) for token in self.rng.permutation([*self.tokens, *EXTRA_DRIVING_TOKENS])]
            self.token = self.bag.pop()
            self.action = token_to_action(self.token, self.rng)
            self.frames_left = max(1, round(self.rng.uniform(*self.hold_seconds) / self.frame_seconds))
            if self.follow_track is not None:
                self.steers_freely = self.rng.random() < self.free_steering_share
        self.frames_left -= 1
        if self.steers_freely:
            return self.token, self.action
        action = self.action.copy()
        action[STEER] = self.follow_track()
        return action_to_token(action), action


class CarRacingRecorder(GymRecorder):
    """The generic recorder with the scripted driver and captions that say where the car is."""

    def make_env(self) -> gym.Env:
        self.env = super().make_env()  # the track driver reads the car and the track from it
        return self.env

    def player(self, rng: np.random.Generator) -> ScriptedDriver:
        options = self.options
        follows_track = options.driver == "track"
        return ScriptedDriver(
            self.game.vocabulary.tokens,
            rng,
            1 / options.fps,
            tuple(options.hold_seconds),
            follow_track=(lambda: track_steering(self.env)) if follows_track else None,
            free_steering_share=options.free_steering_share,
        )

    def observe(self, env: gym.Env) -> bool:
        """Whether a wheel touches the track."""
        return any(wheel.tiles for wheel in env.unwrapped.car.wheels)

    def caption(self, tokens: list[str], on_track: list[Any]) -> str:
        if self.options.domain_randomize:
            template = (
                CAPTION_ON_TRACK_RANDOM_COLOURS
                if np.mean(on_track) >= ON_TRACK_SHARE
                else CAPTION_OFF_TRACK_RANDOM_COLOURS
            )
        else:
            template = self.game.caption if np.mean(on_track) >= ON_TRACK_SHARE else CAPTION_OFF_TRACK
        return template.format(**{MOTIONS_FIELD: MOTION_SEPARATOR.join(main_motions(self.game, tokens))})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_recording_arguments(parser, fps=DEFAULT_FPS)
    parser.add_argument(
        "--domain_randomize",
        action="store_true",
        help="random track and grass colours per episode (CarRacing's domain_randomize)",
    )
    parser.add_argument(
        "--driver",
        choices=("random", "track"),
        default="random",
        help="random: every segment's steering drawn (the car soon leaves the track and stays on the grass); track: "
        "the steering follows the track except in --free_steering_share of the segments; the pedals are drawn "
        "either way",
    )
    parser.add_argument(
        "--free_steering_share",
        type=float,
        default=0.25,
        help="--driver track: the share of segments that keep their drawn steering",
    )
    options = parser.parse_args(argv)
    check_recording_arguments(parser, options)
    if not 0 <= options.free_steering_share <= 1:
        parser.error(f"--free_steering_share {options.free_steering_share}: a share, in [0, 1]")
    game = load_game(CAR_RACING_GAME_FILE)
    game.env_kwargs["domain_randomize"] = options.domain_randomize
    CarRacingRecorder(game, options).record(Path(options.output_dir))


if __name__ == "__main__":
    run(main)
