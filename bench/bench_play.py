"""The play page's frame rate at full CogVideoX-2B size (random weights): stage 4's play server, watched through
its WebSocket as a tab watches it, keys changed every few seconds.

    python bench/bench_play.py --work_dir /tmp/bench --seconds 40 --json play.json -- --compile --overlap_decode

A stage-4 model directory (the random 2B base model of bench_stream.py with random control blocks, recording a
window of 4 groups of 4 latent frames and ``--fps``) and a random initial clip are written to ``--work_dir``;
``stage4/play.py`` serves them on a local port with the options after ``--``. The client measures, over
``--seconds`` after the first frame: the frames it received per second (what a tab shows), the server's own
count of frames shown (``server_fps``) and the stream's generation rate (``generation_fps``) from the frame
headers, frames dropped for the tab, and the control-to-screen latencies the server reports. The page shows
min(generation rate, the model's frame rate): ``--fps`` sets the latter above the stream's rate so the page is
measured against the stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
from accelerate import init_empty_weights
from bench_stream import PROMPT, add_model_arguments, base_model_dir, interactive_transformer
from diffusers import AutoencoderKLCogVideoX

from stage3.cogvideox.pipeline_cogvideox import RECIPE_GROUP_SIZE, RECIPE_NUM_GROUPS, window_clip_frames
from thematrix.model_dir import GenerationDefaults, save_model_dir
from thematrix.video import write_mp4

ROOT = Path(__file__).resolve().parents[1]
HEADER_LENGTH = struct.Struct(">I")  # the server's frame message: header length, JSON header, JPEG
KEY_CODES = ("Digit1", "Digit2", "Digit3")  # latching keys of the bench vocabulary's first tokens
KEY_PERIOD_S = 3.0
STARTUP_TIMEOUT_S = 600.0  # loading 2B weights and T5-XXL, then with --compile its warm-up stream (cold: minutes)


def write_inputs(cli) -> tuple[Path, Path]:
    """The stage-4 model directory and the initial clip, in ``--work_dir``."""
    work = Path(cli.work_dir)
    model_dir = work / "play-2b"
    if not (model_dir / "model_index.json").is_file():
        base = base_model_dir(cli)
        frames = window_clip_frames_of(base)
        defaults = GenerationDefaults(
            fps=cli.fps,
            height=cli.height,
            width=cli.width,
            num_frames=frames,
            prompt=PROMPT,
            num_groups=RECIPE_NUM_GROUPS,
            group_size=RECIPE_GROUP_SIZE,
        )
        save_model_dir(interactive_transformer(base), base, model_dir, defaults)
    clip = work / "initial.mp4"
    if not clip.is_file():
        frames = window_clip_frames_of(model_dir)
        rng = np.random.default_rng(0)
        write_mp4(rng.integers(0, 256, (frames, cli.height, cli.width, 3), dtype=np.uint8), clip, fps=cli.fps)
    return model_dir, clip


def window_clip_frames_of(model_dir: Path) -> int:
    """Frames of the recipe window's clip for the model's VAE (built without weights: only its layout is read)."""
    with init_empty_weights():
        vae = AutoencoderKLCogVideoX.from_config(AutoencoderKLCogVideoX.load_config(model_dir / "vae"))
    return window_clip_frames(vae, RECIPE_NUM_GROUPS, RECIPE_GROUP_SIZE)


async def watch(url: str, seconds: float) -> dict:
    """Receive frames as a tab does for ``seconds`` after the first one, changing the held key every few seconds."""
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                async with session.get(url + "api/info") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the play server at {url} did not answer within {STARTUP_TIMEOUT_S} s")
            await asyncio.sleep(1.0)
        arrivals, headers = [], []
        async with session.ws_connect(url + "ws", max_msg_size=0) as ws:
            first = None
            next_key, key_index = 0.0, 0
            async for message in ws:
                if message.type != aiohttp.WSMsgType.BINARY:
                    continue
                now = time.monotonic()
                (length,) = HEADER_LENGTH.unpack_from(message.data)
                header = json.loads(message.data[HEADER_LENGTH.size : HEADER_LENGTH.size + length])
                first = first if first is not None else now
                arrivals.append(now)
                headers.append(header)
                if now - first >= next_key:
                    await ws.send_str(json.dumps({"type": "keys", "held": [KEY_CODES[key_index % len(KEY_CODES)]]}))
                    key_index += 1
                    next_key += KEY_PERIOD_S
                if now - first >= seconds:
                    break
    steady = [t for t in arrivals if t - arrivals[0] >= KEY_PERIOD_S]  # after the first group and its start-up
    latencies = [h["latency_ms"] for h in headers if h.get("latency_ms") is not None]
    generation = [h["generation_fps"] for h in headers[len(headers) // 2 :] if h.get("generation_fps")]
    return {
        "frames_received": len(arrivals),
        "page_fps": (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else None,
        "server_fps_median": statistics.median(h["server_fps"] for h in headers[len(headers) // 2 :]),
        "generation_fps_median": statistics.median(generation) if generation else None,
        "frames_dropped_for_the_tab": headers[-1].get("dropped", 0) if headers else None,
        "control_to_screen_ms": latencies,
        "key_changes": key_index,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--fps", type=int, default=30, help="the model's recorded frame rate, the page's ceiling")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long to watch after the first frame")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--json", default=None)
    parser.add_argument("play_options", nargs="*", help="options for stage4/play.py, after --")
    cli = parser.parse_args()
    if cli.work_dir is None:
        parser.error("--work_dir is needed: the model directory and the clip are written there")
    model_dir, clip = write_inputs(cli)
    command = [sys.executable, str(ROOT / "stage4" / "play.py"), "--model_dir", str(model_dir)]
    command += ["--initial_video", str(clip), "--port", str(cli.port), *cli.play_options]
    server = subprocess.Popen(command, cwd=ROOT / "stage4")
    try:
        measures = asyncio.run(watch(f"http://127.0.0.1:{cli.port}/", cli.seconds))
    finally:
        server.terminate()
        server.wait(timeout=60)
    results = {"command": " ".join(command[1:]), "model_fps": cli.fps, **measures}
    print(json.dumps(results, indent=2))
    if cli.json:
        Path(cli.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
