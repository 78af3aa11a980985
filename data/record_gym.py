"""Record any installed Gymnasium environment as training footage, headless on the CPU.

    python data/record_gym.py --game data/games/lunar_lander.json --output_dir outputs/lunar_lander \
        --episodes 40 --clips_per_episode 1 --frames_per_clip 33 --fps 25
    python data/record_gym.py --env Pendulum-v1 --fps 10 --output_dir outputs/pendulum \
        --control CCW '[-2.0]' "The pendulum is pushed counter-clockwise." \
        --control CW '[2.0]' "The pendulum is pushed clockwise." --control FREE '[0.0]' "The pendulum swings freely."

Writes OUTPUT_DIR/videos/*.mp4, index.json and vocabulary.json, then checks them as training
does. The game (tokens, phrases, each token's action) comes from a game file or from --env and
--control flags; data/README.md describes both and how to bring another game.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pygame  # noqa: F401 - before decord loads: see thematrix/data/gym_recorder.py

from thematrix.cli import run
from thematrix.data.gym_recorder import (
    GymRecorder,
    add_recording_arguments,
    check_recording_arguments,
    game_from_flags,
    load_game,
)

DEFAULT_FPS = 10


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'{text!r} is not a JSON object; write {{"option": value}}')
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--game", type=Path, help="game file: env id, tokens with phrases and actions (data/games/*.json)"
    )
    source.add_argument("--env", help="Gymnasium env id; give its controls with --control")
    parser.add_argument(
        "--control",
        nargs=3,
        action="append",
        default=[],
        metavar=("TOKEN", "ACTION", "PHRASE"),
        help="with --env: a token, its env action as JSON (2, or [0.5, -1.0]) and its phrase; repeat",
    )
    parser.add_argument("--caption", help="with --env: caption template, {motions} = the clip's main controls")
    parser.add_argument(
        "--env_kwargs",
        type=json_object,
        default={},
        help="JSON object of gym.make options, e.g. '{\"continuous\": true}' (added to the game file's)",
    )
    add_recording_arguments(parser, fps=DEFAULT_FPS)
    options = parser.parse_args(argv)
    check_recording_arguments(parser, options)
    if options.env and not options.control:
        parser.error("--env needs its controls: --control TOKEN ACTION PHRASE, once per token")
    if options.game and (options.control or options.caption):
        parser.error("--control and --caption go with --env; a game file holds its own")
    game = load_game(options.game) if options.game else game_from_flags(options.env, options.control, options.caption)
    game.env_kwargs.update(options.env_kwargs)
    GymRecorder(game, options).record(Path(options.output_dir))


if __name__ == "__main__":
    run(main)
