"""Record CarRacing-v3 footage with per-frame controls as clips + an index file for training.

    python data/record_carracing.py --output_dir outputs/carracing --episodes 8 --clips_per_episode 2

A scripted driver plays Gymnasium's CarRacing-v3 headless: a random (seeded) sequence of
segments that each hold one control (drive, brake or coast; straight, left or right), so every
token of the car-racing vocabulary occurs. The env simulates 50 steps per second; every
``50 / fps``-th step is rendered (600x400 render frames, resized and center-cropped to
``--resolution``). Token ``i`` of a clip is the control held while the env moved from frame
``i - 1`` to frame ``i``: the action whose effect frame ``i`` shows. See data/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from thematrix.controls import CAR_RACING_CONTROLS, DEFAULT_VOCABULARY
from thematrix.data.index import load_index
from thematrix.video import write_mp4

ENV_ID = "CarRacing-v3"
ENV_FPS = 50  # CarRacing's physics and render rate (env.metadata["render_fps"])
# The env's camera zooms in from far away during its first second; clips start after it.
ZOOM_IN_STEPS = ENV_FPS
# Action = (steer in [-1, 1] with -1 full left, gas in [0, 1], brake in [0, 1]).
STEER, GAS, BRAKE = 0, 1, 2
STEER_THRESHOLD = 0.1
GAS_THRESHOLD = 0.1
BRAKE_THRESHOLD = 0.1

# Scripted driver: each segment holds one control for a random duration; magnitudes are drawn
# per segment so the footage covers gentle and hard inputs.
SEGMENT_SECONDS = (0.4, 1.6)
STEER_RANGE = (0.3, 1.0)
GAS_RANGE = (0.2, 0.8)
BRAKE_RANGE = (0.2, 0.7)
LAUNCH_GAS = 0.5  # held during the zoom-in so the car is already moving when a clip starts
# The segments are drawn from shuffled bags holding every token once, plus the driving tokens
# again: every token appears within each bag, and the car spends most time on the move.
EXTRA_DRIVING_TOKENS = ("D", "DL", "DR")

CAPTION_ON_TRACK = "A top-down view of a red race car on a grey track surrounded by green grass"
CAPTION_OFF_TRACK = "A top-down view of a red race car on green grass beside a grey track"
# The scene caption says "on the track" when at least this share of frames has a wheel on it.
ON_TRACK_SHARE = 0.5
MOTION_PHRASES = {
    "D": "driving forward",
    "DL": "driving and turning left",
    "DR": "driving and turning right",
    "B": "braking",
    "BL": "braking while steering left",
    "BR": "braking while steering right",
    "N": "coasting",
    "NL": "coasting and turning left",
    "NR": "coasting and turning right",
}
# Runs of a control shorter than this many frames are too brief to mention in a caption.
MIN_CAPTIONED_RUN_FRAMES = 3
MAX_CAPTIONED_MOTIONS = 4
VALID_FPS = [fps for fps in range(1, ENV_FPS + 1) if ENV_FPS % fps == 0]


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


class ScriptedDriver:
    """Holds one control per segment; segments come from shuffled bags of all tokens."""

    def __init__(self, rng: np.random.Generator, frame_seconds: float):
        self.rng = rng
        self.frame_seconds = frame_seconds
        self.bag: list[str] = []
        self.action = np.zeros(3, dtype=np.float32)
        self.frames_left = 0

    def next_action(self) -> np.ndarray:
        """The action to hold until the next recorded frame."""
        if self.frames_left == 0:
            if not self.bag:
                self.bag = [str(token) for token in self.rng.permutation([*CAR_RACING_CONTROLS, *EXTRA_DRIVING_TOKENS])]
            token = self.bag.pop()
            self.action = token_to_action(token, self.rng)
            self.frames_left = max(1, round(self.rng.uniform(*SEGMENT_SECONDS) / self.frame_seconds))
        self.frames_left -= 1
        return self.action


def caption_for(tokens: list[str], on_track: list[bool]) -> str:
    """Describe a clip from what happened: where the car is, then its main motions in order."""
    runs: list[tuple[str, int]] = []
    for token in tokens:
        if runs and runs[-1][0] == token:
            runs[-1] = (token, runs[-1][1] + 1)
        else:
            runs.append((token, 1))
    motions: list[str] = []
    for token, length in runs:
        phrase = MOTION_PHRASES[token]
        if length >= MIN_CAPTIONED_RUN_FRAMES and (not motions or motions[-1] != phrase):
            motions.append(phrase)
    if not motions:
        motions = [MOTION_PHRASES[max(runs, key=lambda run: run[1])[0]]]
    scene = CAPTION_ON_TRACK if np.mean(on_track) >= ON_TRACK_SHARE else CAPTION_OFF_TRACK
    return f"{scene}, {', then '.join(motions[:MAX_CAPTIONED_MOTIONS])}."


@dataclass
class Clip:
    path: str
    tokens: list[str]
    on_track: list[bool]


def record_episode(env, episode: int, args, output_dir: Path, progress) -> list[Clip]:
    """Play one episode and write its clips; a clip cut short by the episode ending is dropped."""
    seeds = np.random.SeedSequence([args.seed, episode]).generate_state(2)
    driver = ScriptedDriver(np.random.default_rng(seeds[0]), frame_seconds=1 / args.fps)
    steps_per_frame = ENV_FPS // args.fps
    env.reset(seed=int(seeds[1]))
    for _ in range(ZOOM_IN_STEPS):
        env.step(np.array([0.0, LAUNCH_GAS, 0.0], dtype=np.float32))

    clips = []
    for clip_number in range(args.clips_per_episode):
        frames, tokens, on_track = [], [], []
        for _ in range(args.frames_per_clip):
            action = driver.next_action()
            for _ in range(steps_per_frame):
                _, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    tqdm.write(
                        f"episode {episode}: the episode ended (car left the playfield or finished the lap) "
                        f"after {clip_number} clips; its partial clip is dropped"
                    )
                    return clips
            frames.append(resize_frame(env.render(), args.height, args.width))
            tokens.append(action_to_token(action))
            on_track.append(any(wheel.tiles for wheel in env.unwrapped.car.wheels))
        relative = Path("videos") / f"episode_{episode:04d}_clip_{clip_number:02d}.mp4"
        write_mp4(np.stack(frames), output_dir / relative, fps=args.fps)
        clips.append(Clip(relative.as_posix(), tokens, on_track))
        progress.update()
    return clips


def resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize keeping the aspect ratio, then center-crop to (height, width)."""
    if frame.shape[:2] == (height, width):
        return frame
    return np.asarray(ImageOps.fit(Image.fromarray(frame), (width, height), method=Image.Resampling.LANCZOS))


def parse_resolution(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--resolution {text!r}: write HEIGHTxWIDTH, e.g. 240x360") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"--resolution {text!r}: height and width must be positive")
    return height, width


def write_index(clips: list[Clip], index_file: Path) -> None:
    """Write the index atomically, in the training format (one token per video frame)."""
    entries = [
        {"path": clip.path, "caption": caption_for(clip.tokens, clip.on_track), "control_signal_seq": ",".join(clip.tokens),
         "valid_frame_idx": 0}
        for clip in clips
    ]
    tmp_file = index_file.with_name(f".{index_file.name}.partial")
    tmp_file.write_text(json.dumps({"list": entries}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp_file, index_file)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="gets videos/*.mp4 and index.json")
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--clips_per_episode", type=int, default=2, help="consecutive clips per episode")
    parser.add_argument("--frames_per_clip", type=int, default=65, help="65 = the largest default frame bucket")
    parser.add_argument(
        "--fps", type=int, default=10, choices=VALID_FPS, help=f"clip frame rate; divides the env's {ENV_FPS}"
    )
    parser.add_argument("--resolution", type=parse_resolution, default=(240, 360), help="HEIGHTxWIDTH of the clips")
    parser.add_argument("--seed", type=int, default=0, help="seeds tracks and driving; same seed, same footage")
    args = parser.parse_args(argv)
    args.height, args.width = args.resolution
    for name in ("episodes", "clips_per_episode", "frames_per_clip"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    steps_needed = ZOOM_IN_STEPS + args.clips_per_episode * args.frames_per_clip * (ENV_FPS // args.fps)
    # The registered step limit (1000) would end long recordings early; this run sets its own.
    env = gym.make(ENV_ID, render_mode="rgb_array", max_episode_steps=steps_needed + 1)
    clips: list[Clip] = []
    with tqdm(total=args.episodes * args.clips_per_episode, unit="clip", desc="recording") as progress:
        for episode in range(args.episodes):
            clips += record_episode(env, episode, args, output_dir, progress)
    env.close()
    if not clips:
        raise SystemExit("no clip was recorded: every episode ended before its first clip was complete")

    index_file = output_dir / "index.json"
    write_index(clips, index_file)
    samples, problems = load_index(index_file, output_dir, DEFAULT_VOCABULARY)
    for problem in problems:
        print(problem)
    counts = Counter(token for clip in clips for token in clip.tokens)
    print(f"wrote {len(clips)} clips of {args.frames_per_clip} frames at {args.fps} fps to {output_dir}; "
          f"index {index_file} has {len(samples)} valid entries")
    print("frames per control token: " + ", ".join(f"{token} {counts[token]}" for token in CAR_RACING_CONTROLS))
    if problems:
        raise SystemExit(f"{len(problems)} problems in the written index (listed above)")


if __name__ == "__main__":
    main()
