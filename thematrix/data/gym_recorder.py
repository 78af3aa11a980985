"""Recording footage of any Gymnasium environment: clips, an index with one control token per frame, the vocabulary.

A *game* says how a player's keys become tokens: the env id, each token's phrase (the vocabulary)
and the env action it stands for, and optionally how to warm up and caption. It comes from a game
file (data/README.md) or from command-line flags. A seeded player holds one token for a random
duration; every ``render_fps / fps``-th env step is rendered, resized and center-cropped, so clips
play back at the game's real speed. Token ``i`` of a clip is the control held while the env moved
from frame ``i - 1`` to frame ``i``: the action whose effect frame ``i`` shows.

``GymRecorder`` plays and writes; a game with its own player or captions (CarRacing's scripted
driver) subclasses it and overrides ``player``, ``observe`` and ``caption``.
"""

from __future__ import annotations

import argparse
import json
import os
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import pygame  # noqa: F401 - before decord (through thematrix.data below): see the note under the imports
import torch
from gymnasium.spaces import Discrete
from tqdm import tqdm

from thematrix.controls import (
    GAME_KEYMAP_KEY,
    VOCABULARY_FILE,
    VOCABULARY_KEYS,
    ControlError,
    ControlVocabulary,
    read_json_object,
    refuse_unknown_keys,
    vocabulary_from_json,
)
from thematrix.data.dataset import resize_center_crop
from thematrix.data.index import INDEX_LIST_KEY, load_index
from thematrix.video import write_mp4

# decord loads its libraries into the global symbol scope, an old zlib among them; pygame's PNG reader loaded
# after that binds to it and fails ("Error reading the PNG file"), so envs that draw PNG sprites (Pendulum) cannot
# render. A recorder script imports pygame among its third-party imports, before any thematrix module loads decord.

ENV_ID_KEY, ENV_KWARGS_KEY, ACTIONS_KEY, WARMUP_KEY, CAPTION_KEY, MOTIONS_KEY = (
    "env_id",
    "env_kwargs",
    "actions",
    "warmup",
    "caption",
    "motions",
)
# GAME_KEYMAP_KEY is play's (thematrix/play/keymap.py): the recorder accepts it and leaves it alone.
GAME_KEYS = (
    ENV_ID_KEY,
    ENV_KWARGS_KEY,
    *VOCABULARY_KEYS,
    ACTIONS_KEY,
    WARMUP_KEY,
    CAPTION_KEY,
    MOTIONS_KEY,
    GAME_KEYMAP_KEY,
)
WARMUP_KEYS = ("seconds", "token")
MOTIONS_FIELD = "motions"  # the one placeholder of a caption template
DEFAULT_CAPTION = "Gameplay footage, {motions}."
INDEX_FILE = "index.json"
# 1 + 4 * (2 + 4 * 4): stage 3's window (4 groups of 4 latent frames) with 2 latent frames of causal context.
DEFAULT_FRAMES_PER_CLIP = 73
VIDEOS_DIR = "videos"
# Runs of a control shorter than this many frames are too brief to mention in a caption.
MIN_CAPTIONED_RUN_FRAMES = 3
MAX_CAPTIONED_MOTIONS = 4
MOTION_SEPARATOR = ", then "
# pygame (which Gymnasium's renderers use) opens a display unless told there is none.
HEADLESS_ENVIRONMENT = {"SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}


@dataclass
class Game:
    """How a game's keys become control tokens: see the module docstring and data/README.md."""

    env_id: str
    vocabulary: ControlVocabulary
    actions: dict[str, Any]  # token -> the env action it stands for (an int, or a list of numbers)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    warmup_seconds: float = 0.0  # after a reset, hold warmup_token this long before recording
    warmup_token: str | None = None
    caption: str = DEFAULT_CAPTION  # template; {motions} = the clip's main controls in order
    motions: dict[str, str] = field(default_factory=dict)  # token -> its words in captions
    source: str = "the command line"

    def __post_init__(self):
        where = self.source
        without_action = sorted(set(self.vocabulary.tokens) - set(self.actions))
        not_tokens = sorted(set(self.actions) - set(self.vocabulary.tokens))
        if without_action or not_tokens:
            found = [f"tokens {without_action} have no action"] * bool(without_action)
            found += [f"{not_tokens} are not tokens of the vocabulary"] * bool(not_tokens)
            raise ControlError(
                f"{where}: {ACTIONS_KEY}: {' and '.join(found)}. Fix: give every token of the "
                "vocabulary exactly one action"
            )
        unknown = sorted(set(self.motions) - set(self.vocabulary.tokens))
        if unknown:
            raise ControlError(f"{where}: {MOTIONS_KEY}: {unknown} are not tokens of the vocabulary. Fix: remove them")
        if self.warmup_seconds < 0 or (self.warmup_seconds and self.warmup_token not in self.vocabulary.tokens):
            raise ControlError(
                f"{where}: {WARMUP_KEY}: hold a token of the vocabulary for 0 or more seconds, e.g. "
                f'{{"seconds": 1.0, "token": "{self.vocabulary.tokens[0]}"}}'
            )
        fields = {name for _, name, _, _ in string.Formatter().parse(self.caption) if name is not None}
        if fields - {MOTIONS_FIELD}:
            raise ControlError(
                f"{where}: {CAPTION_KEY}: {self.caption!r} has placeholders {sorted(fields - {MOTIONS_FIELD})}. Fix: use "
                f"only {{{MOTIONS_FIELD}}}, which becomes the clip's main controls"
            )

    def motion(self, token: str) -> str:
        """A token's words in captions: its ``motions`` entry, else its phrase without the final period."""
        if token in self.motions:
            return self.motions[token]
        phrase = self.vocabulary.phrases[self.vocabulary.token_id(token)].rstrip(".")
        return phrase[:1].lower() + phrase[1:]


def _require(source: str, key: str, value: Any, kind: type | tuple[type, ...], example: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ControlError(f"{source}: {key!r} is {json.dumps(value)}. Fix: write {example}")
    return value


def load_game(path: str | os.PathLike) -> Game:
    """Read a game file: a ``vocabulary.json`` plus the env and each token's action (data/README.md)."""
    path = Path(path)
    source = str(path)
    content = read_json_object(path, "game file")
    refuse_unknown_keys(path, content, GAME_KEYS)
    vocabulary = vocabulary_from_json(content, source)
    warmup = _require(source, WARMUP_KEY, content.get(WARMUP_KEY, {}), dict, '{"seconds": 1.0, "token": "..."}')
    refuse_unknown_keys(path, warmup, WARMUP_KEYS)
    return Game(
        env_id=_require(source, ENV_ID_KEY, content.get(ENV_ID_KEY), str, 'the Gymnasium id, e.g. "LunarLander-v3"'),
        vocabulary=vocabulary,
        actions=_require(source, ACTIONS_KEY, content.get(ACTIONS_KEY), dict, '{"TOKEN": action, ...}'),
        env_kwargs=_require(source, ENV_KWARGS_KEY, content.get(ENV_KWARGS_KEY, {}), dict, '{"option": value}'),
        warmup_seconds=_require(source, f"{WARMUP_KEY}.seconds", warmup.get("seconds", 0.0), (int, float), "seconds"),
        warmup_token=warmup.get("token"),
        caption=_require(source, CAPTION_KEY, content.get(CAPTION_KEY, DEFAULT_CAPTION), str, "a caption template"),
        motions=_require(source, MOTIONS_KEY, content.get(MOTIONS_KEY, {}), dict, '{"TOKEN": "words", ...}'),
        source=source,
    )


def game_from_flags(env_id: str, controls: Sequence[Sequence[str]], caption: str | None) -> Game:
    """A game from ``--env ID --control TOKEN ACTION PHRASE ...`` (ACTION as JSON: ``2`` or ``[0.5, -1]``)."""
    actions, phrases = {}, {}
    for token, action, phrase in controls:
        try:
            actions[token] = json.loads(action)
        except json.JSONDecodeError:
            raise ControlError(
                f"--control {token} {action!r}: the action is not JSON. Fix: write an integer for a discrete action "
                "space (2) or a list of numbers for a continuous one ('[0.5, -1.0]')"
            ) from None
        phrases[token] = phrase
    if len(phrases) != len(controls):
        raise ControlError("--control: a token appears twice. Fix: give each token one --control")
    vocabulary = ControlVocabulary.from_mapping(phrases, source="--control")
    return Game(env_id, vocabulary, actions, caption=caption or DEFAULT_CAPTION)


def env_action(game: Game, token: str, space: gym.Space) -> Any:
    """The env action of ``token``, checked against the env's action space."""
    action = game.actions[token]
    try:
        value = action if isinstance(space, Discrete) else np.asarray(action, dtype=space.dtype)
        valid = not isinstance(action, bool) and space.contains(value)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ControlError(
            f"{game.source}: {ACTIONS_KEY}.{token}: {json.dumps(action)} is not an action of {game.env_id}, whose action "
            f"space is {space}. Fix: write an action inside that space"
        )
    return value


def main_motions(game: Game, tokens: Sequence[str]) -> list[str]:
    """The clip's main controls in order: runs of at least MIN_CAPTIONED_RUN_FRAMES frames, the longest if none."""
    runs: list[tuple[str, int]] = []
    for token in tokens:
        if runs and runs[-1][0] == token:
            runs[-1] = (token, runs[-1][1] + 1)
        else:
            runs.append((token, 1))
    motions: list[str] = []
    for token, length in runs:
        words = game.motion(token)
        if length >= MIN_CAPTIONED_RUN_FRAMES and (not motions or motions[-1] != words):
            motions.append(words)
    return motions[:MAX_CAPTIONED_MOTIONS] or [game.motion(max(runs, key=lambda run: run[1])[0])]


class Player(Protocol):
    def next(self) -> tuple[str, Any]:
        """The (token, env action) to hold until the next recorded frame."""


class RandomPlayer:
    """Holds a token drawn uniformly from the vocabulary for a random duration, then draws the next."""

    def __init__(
        self,
        tokens: Sequence[str],
        actions: dict[str, Any],
        rng: np.random.Generator,
        frame_seconds: float,
        hold_seconds: tuple[float, float],
    ):
        self.tokens, self.actions, self.rng = list(tokens), actions, rng
        self.frame_seconds, self.hold_seconds = frame_seconds, hold_seconds
        self.token, self.frames_left = self.tokens[0], 0

    def next(self) -> tuple[str, Any]:
        if self.frames_left == 0:
            self.token = self.tokens[self.rng.integers(len(self.tokens))]
            self.frames_left = max(1, round(self.rng.uniform(*self.hold_seconds) / self.frame_seconds))
        self.frames_left -= 1
        return self.token, self.actions[self.token]


@dataclass
class Clip:
    path: str  # relative to the output folder
    tokens: list[str]
    caption: str


def resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """A rendered uint8 frame ``[H, W, 3]`` resized keeping its aspect, then center-cropped, as the dataset does
    (in uint8, which torch resizes several times faster than float on the CPU)."""
    video = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]
    return resize_center_crop(video, height, width)[0].permute(1, 2, 0).numpy()


class GymRecorder:
    """Plays ``game`` headless and writes ``videos/*.mp4``, ``index.json`` and ``vocabulary.json``.

    ``options`` holds the recording flags (``add_recording_arguments``).
    """

    def __init__(self, game: Game, options: argparse.Namespace):
        self.game, self.options = game, options
        self.episodes_ended_early = 0
        # Set by make_env, from the env: each token's checked action, env steps per recorded frame and of warm-up.
        self.actions: dict[str, Any] = {}
        self.steps_per_frame = self.warmup_steps = 0

    # ---------------------------------------------------------------- hooks
    def player(self, rng: np.random.Generator) -> Player:
        return RandomPlayer(
            self.game.vocabulary.tokens, self.actions, rng, 1 / self.options.fps, tuple(self.options.hold_seconds)
        )

    def observe(self, env: gym.Env) -> Any:
        """What a caption needs to know about a recorded frame, besides its control (nothing, by default)."""
        return None

    def caption(self, tokens: list[str], observations: list[Any]) -> str:
        return self.game.caption.format(**{MOTIONS_FIELD: MOTION_SEPARATOR.join(main_motions(self.game, tokens))})

    # ---------------------------------------------------------------- recording
    def make_env(self) -> gym.Env:
        for name, value in HEADLESS_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        try:
            probe = gym.make(self.game.env_id, **self.game.env_kwargs)
        except gym.error.Error as error:
            raise ControlError(
                f"{self.game.source}: {ENV_ID_KEY}: {self.game.env_id!r} cannot be made ({error}). Fix: "
                "name an installed Gymnasium environment and options it takes"
            ) from None
        render_fps = probe.metadata.get("render_fps")
        probe.close()
        if not render_fps or render_fps % self.options.fps:
            valid = [fps for fps in range(1, (render_fps or 0) + 1) if render_fps % fps == 0]
            raise ControlError(
                f"--fps {self.options.fps}: {self.game.env_id} renders at {render_fps} fps, so a clip's "
                f"frame rate must divide it. Fix: pass one of {valid}"
            )
        self.steps_per_frame = render_fps // self.options.fps
        self.warmup_steps = round(self.game.warmup_seconds * render_fps)
        options = self.options
        # The registered step limit would end long recordings early; this run sets its own.
        steps = self.warmup_steps + options.clips_per_episode * options.frames_per_clip * self.steps_per_frame
        env = gym.make(self.game.env_id, render_mode="rgb_array", max_episode_steps=steps + 1, **self.game.env_kwargs)
        self.actions = {token: env_action(self.game, token, env.action_space) for token in self.game.vocabulary.tokens}
        return env

    def record_episode(self, env: gym.Env, episode: int, output_dir: Path, progress: tqdm) -> list[Clip]:
        """Play one episode and write its clips; a clip cut short by the episode ending is dropped."""
        options = self.options
        player_seed, env_seed = np.random.SeedSequence([options.seed, episode]).generate_state(2)
        player = self.player(np.random.default_rng(player_seed))
        env.reset(seed=int(env_seed))
        for _ in range(self.warmup_steps):
            if any(env.step(self.actions[self.game.warmup_token])[2:4]):
                self.episodes_ended_early += 1
                return []
        clips = []
        for clip_number in range(options.clips_per_episode):
            frames, tokens, observations = [], [], []
            for _ in range(options.frames_per_clip):
                token, action = player.next()
                for _ in range(self.steps_per_frame):
                    _, _, terminated, truncated, _ = env.step(action)
                    if terminated or truncated:
                        self.episodes_ended_early += 1
                        return clips
                frames.append(resize_frame(env.render(), options.height, options.width))
                tokens.append(token)
                observations.append(self.observe(env))
            relative = Path(VIDEOS_DIR) / f"episode_{episode:04d}_clip_{clip_number:02d}.mp4"
            write_mp4(np.stack(frames), output_dir / relative, fps=options.fps)
            clips.append(Clip(relative.as_posix(), tokens, self.caption(tokens, observations)))
            progress.update()
        return clips

    def record(self, output_dir: Path) -> list[Clip]:
        """Record every episode, write the vocabulary and the index, and check them as training will."""
        output_dir.mkdir(parents=True, exist_ok=True)
        env = self.make_env()
        clips: list[Clip] = []
        with tqdm(
            total=self.options.episodes * self.options.clips_per_episode, unit="clip", desc="recording"
        ) as progress:
            first = self.options.first_episode
            for episode in range(first, first + self.options.episodes):
                clips += self.record_episode(env, episode, output_dir, progress)
        env.close()
        if self.episodes_ended_early:
            print(
                f"{self.episodes_ended_early} of {self.options.episodes} episodes ended (the game was over) before "
                "their last clip was complete; those partial clips were dropped"
            )
        if not clips:
            raise ControlError(
                f"no clip was recorded: every episode of {self.game.env_id} ended before its first clip of "
                f"{self.options.frames_per_clip} frames at {self.options.fps} fps was complete. Fix: pass fewer "
                "--frames_per_clip or a higher --fps"
            )
        self.game.vocabulary.save(output_dir / VOCABULARY_FILE)
        index_file = output_dir / INDEX_FILE
        write_index(clips, index_file)
        samples, problems = load_index(index_file, output_dir)
        for problem in problems:
            print(problem)
        counts = Counter(token for clip in clips for token in clip.tokens)
        print(
            f"wrote {len(clips)} clips of {self.options.frames_per_clip} frames at {self.options.fps} fps to "
            f"{output_dir}; index {index_file} has {len(samples)} valid entries; vocabulary {VOCABULARY_FILE}"
        )
        print(
            "frames per control token: "
            + ", ".join(f"{token} {counts[token]}" for token in self.game.vocabulary.tokens)
        )
        if problems:
            raise ControlError(f"{len(problems)} problems in the written index (listed above)")
        return clips


def write_index(clips: list[Clip], index_file: Path) -> None:
    """Write the index atomically, in the training format (one token per video frame)."""
    entries = [
        {"path": clip.path, "caption": clip.caption, "control_signal_seq": ",".join(clip.tokens), "valid_frame_idx": 0}
        for clip in clips
    ]
    partial = index_file.with_name(f".{index_file.name}.partial")
    partial.write_text(json.dumps({INDEX_LIST_KEY: entries}, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, index_file)


def parse_resolution(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--resolution {text!r}: write HEIGHTxWIDTH, e.g. 240x360") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"--resolution {text!r}: height and width must be positive")
    return height, width


def add_recording_arguments(parser: argparse.ArgumentParser, fps: int) -> None:
    """The flags every recorder takes; ``fps`` is the default clip frame rate."""
    parser.add_argument("--output_dir", required=True, help="gets videos/*.mp4, index.json and vocabulary.json")
    parser.add_argument("--episodes", type=int, default=4, help="one new game (seeded reset) per episode")
    parser.add_argument("--clips_per_episode", type=int, default=2, help="consecutive clips per episode")
    parser.add_argument(
        "--frames_per_clip",
        type=int,
        default=DEFAULT_FRAMES_PER_CLIP,
        help=f"{DEFAULT_FRAMES_PER_CLIP} = 1 + 4 * (2 + 4 * 4): stage 3's window with causal context",
    )
    parser.add_argument("--fps", type=int, default=fps, help="clip frame rate; must divide the env's render_fps")
    parser.add_argument("--resolution", type=parse_resolution, default=(240, 360), help="HEIGHTxWIDTH of the clips")
    parser.add_argument(
        "--hold_seconds",
        type=float,
        nargs=2,
        default=(0.4, 1.6),
        metavar=("MIN", "MAX"),
        help="the player holds each control for a random duration in this range",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the games and the player; same seed, same footage")
    parser.add_argument(
        "--first_episode",
        type=int,
        default=0,
        help="number of the first episode; episode e is seeded by (seed, e), so recorders given disjoint ranges "
        "record disjoint parts of one set",
    )


def check_recording_arguments(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    options.height, options.width = options.resolution
    for name in ("episodes", "clips_per_episode", "frames_per_clip", "fps"):
        if getattr(options, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if options.first_episode < 0:
        parser.error(f"--first_episode must be at least 0; got {options.first_episode}")
    low, high = options.hold_seconds
    if not 0 < low <= high:
        parser.error(f"--hold_seconds {low} {high}: give 0 < MIN <= MAX")
