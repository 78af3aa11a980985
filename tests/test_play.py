"""Playing a model in the browser, on the tiny stage-3 model: key maps, the world's threads (frame rate, bounded lead,
controls reaching the generator, pause, restart, prompt changes, recordings that replay exactly with inference.py),
the server (tab outboxes, refusals, bad requests), the command line, and the page end to end in headless Chromium."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import aiohttp
import decord
import numpy as np
import pytest
from PIL import Image

import thematrix.controls
from stage3 import inference
from stage3 import play as swin_play
from tests.conftest import TEST_VOCABULARY, TINY_HEIGHT, TINY_WIDTH, moving_square_clip
from thematrix import acceleration
from thematrix.controls import GAME_KEYMAP_KEY, ControlVocabulary, game_files, vocabulary_from_json
from thematrix.data.initial_clip import InitialClip
from thematrix.model_dir import NO_TEXT_GUIDANCE, SWIN_DPM_SAMPLER, generation_defaults
from thematrix.play.keymap import KeyMap, KeyMapError, default_keymap, load_keymap
from thematrix.play.server import FRAME_HEADER_LENGTH, PlayServer, Viewer, encode_frame
from thematrix.play.world import ShownFrame, World
from thematrix.video import read_video_info, write_mp4

# The model plays at the clip's rate; a fast one keeps the tests short (a group of 2 x 4 frames lasts 1/3 s).
PLAY_FPS = 24
CLIP_FRAMES = 40
WINDOW = ["--num_groups", "2", "--group_size", "2", "--num_inference_steps", "2"]
TIMEOUT_S = 60.0
CHROMIUM = shutil.which("chromium")
# The tests' game steered like a car: arrows move, two arrows together do the rest, no key stays.
TEST_KEYMAP = {
    "buttons": {
        "up": ["ArrowUp", "KeyW"],
        "down": ["ArrowDown", "KeyS"],
        "left": ["ArrowLeft", "KeyA"],
        "right": ["ArrowRight", "KeyD"],
    },
    "controls": {
        "": "STAY",
        "left": "LEFT",
        "right": "RIGHT",
        "up": "UP",
        "down": "DOWN",
        "up+left": "JUMP",
        "up+right": "RUN",
        "down+left": "DUCK",
        "down+right": "FIRE",
    },
}
# As root on a closed network, Chromium needs no sandbox and no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def wait_until(condition, timeout_s: float = TIMEOUT_S, poll_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {condition}")


@pytest.fixture(scope="module")
def play_dataset(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("play_clips")
    write_mp4(moving_square_clip(2, CLIP_FRAMES, TINY_HEIGHT, TINY_WIDTH), root / "square.mp4", fps=PLAY_FPS)
    entry = {
        "path": "square.mp4",
        "caption": "A red square slides right.",
        "control_signal_seq": ",".join(["RIGHT"] * CLIP_FRAMES),
        "valid_frame_idx": 0,
    }
    (root / "index.json").write_text(json.dumps({"list": [entry]}))
    return root, root / "index.json"


def play_arguments(model_dir, dataset, output_dir, *extra) -> list[str]:
    data_root, index_file = dataset
    return [
        "--model_dir",
        str(model_dir),
        "--data_root",
        str(data_root),
        "--index_file",
        str(index_file),
        "--fps",
        str(PLAY_FPS),
        "--output_dir",
        str(output_dir),
        *WINDOW,
        *extra,
    ]


class LoggedModel(swin_play.StreamWorldModel):
    """The stage-3 adapter, logging each stream it starts and every group's controls as a stream asks for them."""

    def __init__(self, *args):
        super().__init__(*args)
        self.streams: list[tuple[InitialClip, str]] = []
        self.asked: list[tuple[int, list[str], float]] = []

    def stream(self, clip, prompt, controls):
        self.streams.append((clip, prompt))

        def logged(group: int) -> list[str]:
            tokens = controls(group)
            self.asked.append((group, tokens, time.monotonic()))
            return tokens

        return super().stream(clip, prompt, logged)


@pytest.fixture(scope="module")
def world_model(model_dir, play_dataset, tmp_path_factory):
    args = swin_play.parse_args(play_arguments(model_dir, play_dataset, tmp_path_factory.mktemp("play")))
    return LoggedModel(args, swin_play.SwinDPMPipeline, "stage3.inference")


@pytest.fixture
def world(world_model, tmp_path):
    world_model.asked.clear()
    world_model.streams.clear()
    keymap = KeyMap.from_json(TEST_KEYMAP, world_model.vocabulary, "the tests' key map")
    world = World(world_model, keymap, tmp_path / "recordings", tmp_path)
    shown: list[tuple[float, ShownFrame]] = []
    world.on_frame = lambda frame: shown.append((time.monotonic(), frame))
    world.shown = shown
    yield world
    world.close()


# Key maps.


def test_a_game_files_keys_are_the_default_for_its_vocabulary(tmp_path, monkeypatch):
    (tmp_path / "square.json").write_text(json.dumps({**TEST_VOCABULARY.to_json(), GAME_KEYMAP_KEY: TEST_KEYMAP}))
    monkeypatch.setattr(thematrix.controls, "GAMES_DIR", tmp_path)
    keymap = default_keymap(TEST_VOCABULARY)
    cases = {
        (): "STAY",
        ("ArrowUp",): "UP",
        ("KeyW", "KeyA"): "JUMP",
        ("ArrowUp", "ArrowRight"): "RUN",
        ("ArrowDown", "KeyD"): "FIRE",
        ("ArrowLeft",): "LEFT",
        ("Space",): "STAY",
    }
    for held, token in cases.items():
        assert keymap.resolve(held) == token, held
    assert keymap.rest_token == "STAY"


@pytest.mark.parametrize("game_file", game_files(), ids=lambda path: path.stem)
def test_a_game_files_key_map_drives_every_key_of_its_game(game_file):
    game = json.loads(game_file.read_text())
    vocabulary = vocabulary_from_json(game, str(game_file))
    keymap = default_keymap(vocabulary)
    if GAME_KEYMAP_KEY in game:
        assert keymap == KeyMap.from_json(game[GAME_KEYMAP_KEY], vocabulary, str(game_file))
    else:  # one latching key per token
        assert keymap.rest_token is None and sorted(keymap.controls.values()) == sorted(vocabulary.tokens)


def test_another_vocabulary_gets_one_latching_key_per_token(tmp_path):
    vocabulary = ControlVocabulary(("jump", "run", "duck"), ("jumps", "runs", "ducks"))
    keymap = default_keymap(vocabulary)
    assert [keymap.resolve([code]) for code in ("Digit1", "Digit2", "Digit3")] == ["jump", "run", "duck"]
    assert keymap.resolve([]) is None and keymap.rest_token is None  # nothing held: the last token stays
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(keymap.to_json()))
    assert load_keymap(path, vocabulary) == keymap


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"buttons": {"up": ["ArrowUp"]}, "controls": {"up": "UP", "": "X"}},
            "controls[\"\"]: unknown control token 'X'",
        ),
        (
            {"buttons": {"up": ["ArrowUp"]}, "controls": {"up+left": "UP"}},
            "controls[\"up+left\"]: unknown buttons ['left']",
        ),
        ({"buttons": {"up": ["ArrowUp"]}, "controls": {"up": "UP"}}, "no combination gives the tokens ['LEFT']"),
        ({"buttons": {"up": "ArrowUp"}, "controls": {"up": "UP"}}, 'buttons["up"]: give a list of KeyboardEvent.code'),
        ({"controls": {}}, 'a key map is {"buttons"'),
    ],
)
def test_a_bad_key_map_file_names_the_file_and_the_field(tmp_path, data, message):
    vocabulary = ControlVocabulary(("UP", "LEFT"), ("go up", "go left"))
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(data))
    with pytest.raises(KeyMapError, match=re.escape(f"--keymap {path}: {message}")):
        load_keymap(path, vocabulary)
    with pytest.raises(FileNotFoundError, match="--keymap .*missing.json: no such file"):
        load_keymap(tmp_path / "missing.json", vocabulary)


# The server's outbox per tab.


def test_a_tab_that_does_not_read_keeps_the_newest_frames_and_counts_the_rest():
    viewer = Viewer(max_frames=2)
    frames = [ShownFrame(bytes([index]), {"frame": index}) for index in range(10)]
    for frame in frames:
        viewer.push_frame(frame)
    assert list(viewer.frames) == frames[-2:] and viewer.dropped == 8
    message = encode_frame(frames[-1], viewer.dropped)
    (length,) = FRAME_HEADER_LENGTH.unpack(message[: FRAME_HEADER_LENGTH.size])
    header = json.loads(message[FRAME_HEADER_LENGTH.size : FRAME_HEADER_LENGTH.size + length])
    assert header == {"frame": 9, "dropped": 8} and message[FRAME_HEADER_LENGTH.size + length :] == bytes([9])


# The world.


def test_frames_come_at_the_models_frame_rate_and_generation_stays_just_ahead(world, world_model):
    world.start(world_model.clip_from_sample(0))
    count = PLAY_FPS  # a second of play
    wait_until(lambda: len(world.shown) >= count)
    times = [shown_at for shown_at, _ in world.shown[:count]]
    # Generation outpaces 24 fps here, so playback sets the pace; no browser reads the frames at all.
    assert (times[-1] - times[0]) >= (count - 1) / PLAY_FPS * 0.9
    groups_shown = world.shown[count - 1][1].header["group"] + 1
    groups_asked = len(world_model.asked)
    # The window asks num_groups groups ahead; the generator starts a chunk only as the screen needs it.
    assert groups_asked <= groups_shown + world_model.num_groups + 1
    first, last = (
        np.asarray(Image.open(io.BytesIO(frame.jpeg))) for _, frame in (world.shown[1], world.shown[count - 1])
    )
    assert first.shape == (TINY_HEIGHT, TINY_WIDTH, 3) and not np.array_equal(first, last)


def frames_with(world, **header) -> list[tuple[float, ShownFrame]]:
    return [(at, frame) for at, frame in list(world.shown) if all(frame.header[k] == v for k, v in header.items())]


def test_a_held_key_reaches_the_generator_with_the_next_group_and_its_latency_is_measured(world, world_model):
    world.start(world_model.clip_from_sample(0))
    wait_until(lambda: len(world.shown) >= 10)
    pressed = time.monotonic()
    assert world.set_held_keys(["ArrowLeft"]) == "LEFT"
    held = time.monotonic()
    first_left = wait_until(lambda: frames_with(world, control="LEFT"))[0]
    asked = list(world_model.asked)
    assert all(tokens == ["STAY", "STAY"] for _, tokens, at in asked if at < pressed)
    after = [tokens for _, tokens, at in asked if at > held]
    assert after and after[0] == ["LEFT", "LEFT"]
    # The first frame generated under the new key carries the time from the key to the screen.
    shown_at, frame = first_left
    assert frame.header["latency_ms"] is not None
    assert (shown_at - held - 1 / PLAY_FPS) * 1000 < frame.header["latency_ms"] <= (shown_at - pressed) * 1000
    assert all(f.header["control"] != "LEFT" for at, f in world.shown if at < shown_at)
    # Releasing the key gives the rest control again; an unmapped key keeps it, with no new change.
    assert world.set_held_keys([]) == "STAY"
    assert world.set_held_keys(["Space"]) == "STAY"


def test_pause_holds_the_screen_and_restart_plays_the_same_world_again(world, world_model):
    world.start(world_model.clip_from_sample(0))
    count = 12
    wait_until(lambda: len(world.shown) >= count)
    first_run = [frame.jpeg for _, frame in world.shown[:count]]
    world.set_paused(True)
    time.sleep(2 / PLAY_FPS)  # a frame due before the pause may still come
    paused_at = len(world.shown)
    time.sleep(8 / PLAY_FPS)
    assert len(world.shown) == paused_at and world.state()["paused"]
    world.set_paused(False)
    wait_until(lambda: len(world.shown) > paused_at)
    world.restart()
    restarted = len(world.shown)
    wait_until(lambda: len(frames_with(world, segment=2)) >= count)
    assert [frame.jpeg for _, frame in frames_with(world, segment=2)[:count]] == first_run
    assert len(world.shown) >= restarted + count and world.state()["segment"] == 2


def test_a_new_prompt_continues_the_world_from_its_last_frames(world, world_model):
    world.start(world_model.clip_from_sample(0))
    wait_until(lambda: len(world.shown) >= 10)
    with pytest.raises(ValueError, match="the prompt is empty"):
        world.set_prompt(" ")
    world.set_prompt("A blue square slides left.")
    wait_until(lambda: frames_with(world, segment=2))
    clip, prompt = world_model.streams[-1]
    assert prompt == "A blue square slides left." and world.state()["prompt"] == prompt
    # The continuation starts from the last generated frames, read back from the file a replay would use.
    assert clip.path.parent == world.work_dir and len(clip.video) == world_model.initial_frames
    assert read_video_info(clip.path)[0] == world_model.initial_frames


def test_a_recording_replays_exactly_with_inference_py_across_a_prompt_change(world, world_model, monkeypatch):
    world.start(world_model.clip_from_sample(0))
    wait_until(lambda: len(world.shown) >= 10)
    world.set_recording(True)
    wait_until(lambda: world.state()["recording"] == "on")
    wait_until(lambda: len(frames_with(world, segment=2)) >= 8)
    world.set_held_keys(["ArrowRight"])
    wait_until(lambda: frames_with(world, segment=2, control="RIGHT"))
    world.set_prompt("A blue square slides left.")  # the recording goes on in segment 3
    wait_until(lambda: len(frames_with(world, segment=3)) >= 8)
    world.set_held_keys([])
    wait_until(lambda: frames_with(world, segment=3, control="STAY"))
    world.set_recording(False)
    state = world.state()
    assert state["recording"] == "off" and state["last_recording"].endswith(".zip")
    folder = world.recordings_dir / state["last_recording"].removesuffix(".zip")
    with zipfile.ZipFile(folder.with_suffix(".zip")) as archive:
        assert set(archive.namelist()) == {
            "recording.mp4",
            "replay.json",
            "replay.sh",
            "segment-2.mp4",
            "segment-3.mp4",
        }
    segments = json.loads((folder / "replay.json").read_text())["segments"]
    assert len(segments) == 2
    monkeypatch.chdir(folder)
    recording = read_frames(folder / "recording.mp4")
    assert len(recording) == sum(segment["frames"] for segment in segments)
    first = 0
    for number, (segment, pressed) in enumerate(zip(segments, ("RIGHT", "STAY")), start=1):
        arguments = segment["arguments"]
        assert pressed in arguments[arguments.index("--controls") + 1].split(",")
        inference.main(arguments)
        replayed = read_frames(folder / f"replay-{number}.mp4")
        np.testing.assert_array_equal(recording[first : first + segment["frames"]], replayed[: segment["frames"]])
        first += segment["frames"]


def read_frames(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


# The server.


async def refused_and_served(url: str) -> tuple[dict, int]:
    async with aiohttp.ClientSession() as session, session.ws_connect(url + "ws") as first:
        async with session.ws_connect(url + "ws") as second:
            refusal = await second.receive_json()
        frames = 0
        while frames < 3:
            message = await first.receive()
            frames += message.type == aiohttp.WSMsgType.BINARY
        return refusal, frames


def test_one_stream_for_the_tabs_it_takes_and_a_clear_refusal_past_them(world, world_model):
    world.start(world_model.clip_from_sample(0))
    server = PlayServer(world, max_viewers=1)
    with server.running() as url:
        refusal, frames = asyncio.run(refused_and_served(url))
    assert refusal["type"] == "refused" and "--max_viewers 1" in refusal["reason"] and frames == 3


async def post_all(url: str, requests: list) -> list[tuple[int, dict]]:
    answers = []
    async with aiohttp.ClientSession() as session:
        for path, payload in requests:
            if isinstance(payload, Path):
                form = aiohttp.FormData()
                form.add_field("video", payload.read_bytes(), filename=payload.name)
                response = await session.post(url + path, data=form)
            elif isinstance(payload, bytes):
                response = await session.post(url + path, data=payload)
            else:
                response = await session.post(url + path, json=payload)
            answers.append((response.status, await response.json()))
    return answers


def test_bad_requests_say_what_to_send(world, tmp_path):
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    clip = write_mp4(moving_square_clip(1, CLIP_FRAMES, TINY_HEIGHT, TINY_WIDTH), tmp_path / "mine.mp4", fps=PLAY_FPS)
    server = PlayServer(world)
    with server.running() as url:
        answers = asyncio.run(
            post_all(
                url,
                [
                    ("api/start", {"sample": 3}),
                    ("api/upload", not_a_video),
                    ("api/restart", {}),
                    ("api/upload", clip),
                    ("api/prompt", {"prompt": ""}),
                    ("api/pause", b"yes"),
                ],
            )
        )
    (start, upload_bad, restart, upload, prompt, pause) = answers
    assert start == (400, {"error": "sample must be one of 0..0 (the dataset's usable clips), got 3"})
    assert upload_bad[0] == 400 and upload_bad[1]["error"].startswith("the upload notes.mp4 cannot start the world: ")
    assert restart == (400, {"error": "nothing to restart: start from a clip first"})
    assert upload[0] == 200 and upload[1]["source"] == "mine.mp4" and upload[1]["running"]
    assert prompt == (400, {"error": "the prompt is empty; describe the world to continue"})
    assert pause[0] == 400 and pause[1]["error"].startswith("the body is not JSON")


# The command line.


def test_play_streams_and_replays_at_the_guidance_the_model_records(model_dir, play_dataset, tmp_path):
    """A model whose run dropped every caption plays without text guidance, and its recordings replay so."""
    unguided = tmp_path / "model"
    shutil.copytree(model_dir, unguided)
    record = dataclasses.replace(
        generation_defaults(unguided), sampler=SWIN_DPM_SAMPLER, guidance_scale=NO_TEXT_GUIDANCE
    )
    record.save(unguided)
    args = swin_play.parse_args(play_arguments(unguided, play_dataset, tmp_path / "play"))
    model = swin_play.StreamWorldModel(args, swin_play.SwinDPMPipeline, "stage3.inference")
    replay = model.replay_arguments("clip.mp4", "", "STAY", 1, "replay.mp4")
    assert args.guidance_scale == float(replay[replay.index("--guidance_scale") + 1]) == NO_TEXT_GUIDANCE


class CountedModel(swin_play.StreamWorldModel):
    """The stage-3 adapter, counting the streams it starts and the groups they emit."""

    started: list[str] = []
    emitted: list[int] = []

    def stream(self, clip, prompt, controls):
        self.started.append(clip.name)
        for chunk in super().stream(clip, prompt, controls):
            self.emitted.append(chunk.group_index)
            yield chunk


@pytest.mark.parametrize("compiled", [False, True])
def test_a_compiled_world_streams_once_before_the_page_is_served(
    compiled, model_dir, tmp_path, monkeypatch, fresh_compiler
):
    """--compile: a short stream from a blank clip (no clip given) compiles every graph while the model loads, so
    the first player's stream starts on them; without --compile no stream runs before a player's."""
    monkeypatch.setattr(acceleration, "DEFAULT_COMPILE_BACKEND", "aot_eager")
    monkeypatch.setattr(CountedModel, "started", [])
    monkeypatch.setattr(CountedModel, "emitted", [])
    args = swin_play.parse_args(
        ["--model_dir", str(model_dir), "--prompt", "a road", *WINDOW, *["--compile"] * compiled]
    )
    model = CountedModel(args, swin_play.SwinDPMPipeline, "stage3.inference")
    assert model.first_clip is None
    if compiled:
        assert model.started == ["a blank clip"] and model.emitted == list(range(swin_play.WARM_UP_GROUPS))
        assert model.pipeline.vae.decoder.forward is not type(model.pipeline.vae.decoder).forward
    else:
        assert model.started == [] and model.emitted == []


def test_the_page_is_served_on_this_machine_only_unless_told(model_dir):
    args = swin_play.parse_args(["--model_dir", str(model_dir)])
    assert args.host == "127.0.0.1" and args.port == 8000


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--data_root", "clips"], "give --data_root and --index_file together"),
        (["--max_viewers", "0"], "--max_viewers must be at least 1, got 0"),
        (["--keymap", "missing.json"], "--keymap missing.json: no such file"),
    ],
)
def test_bad_options_fail_before_the_model_loads(bad, message, capsys):
    with pytest.raises(SystemExit):
        swin_play.parse_args(["--model_dir", "no/such/model", *bad])
    assert message in capsys.readouterr().err


def test_stage4_play_serves_the_page_and_stops_cleanly_on_ctrl_c(model_dir, play_dataset, tmp_path):
    keymap = tmp_path / "keys.json"
    keymap.write_text(json.dumps(TEST_KEYMAP))
    command = [
        sys.executable,
        "stage4/play.py",
        *play_arguments(model_dir, play_dataset, tmp_path, "--port", "0", "--keymap", str(keymap)),
    ]
    process = subprocess.Popen(
        command,
        cwd=Path(__file__).parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONFAULTHANDLER="1"),  # SIGABRT prints every thread's stack, should it hang
        # Ctrl-C as a terminal delivers it, whatever this process inherited: a shell's background job ignores SIGINT,
        # and a Python started so never sees it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = []
        while not (lines and lines[-1].startswith("play at ")):
            line = process.stdout.readline()
            assert line, f"play.py ended before serving: {''.join(lines)}"
            lines.append(line)
        url = lines[-1].split()[2]
        info = asyncio.run(get_json(url + "api/info"))
        assert [entry["token"] for entry in info["vocabulary"]] == list(TEST_VOCABULARY.tokens)
        assert info["keymap"] == TEST_KEYMAP and info["state"]["running"]
        process.send_signal(signal.SIGINT)
        try:
            output = process.communicate(timeout=TIMEOUT_S)[0]
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            stacks = process.communicate(timeout=TIMEOUT_S)[0]
            pytest.fail(f"play.py still ran {TIMEOUT_S} s after Ctrl-C; its threads:\n{stacks[-6000:]}")
        assert process.returncode == 0, output
    finally:
        process.kill()
    assert not list(tmp_path.glob("session-*"))


async def get_json(url: str) -> dict:
    async with aiohttp.ClientSession() as session:
        return await (await session.get(url)).json()


# The page, end to end in headless Chromium.


@pytest.fixture(scope="module")
def chromium():
    if CHROMIUM is None:
        reason = "no Chromium on this machine: `apt-get install chromium` (Debian) runs the browser test; .ci/run does"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, so CI must not skip it")
        pytest.skip(reason)
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason='playwright is not installed: pip install -e ".[test]"'
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


FRAMES_DRAWN = "Number(document.getElementById('view').dataset.frames || 0)"
CONTROL_ON_SCREEN = "document.getElementById('view').dataset.control"


def canvas_after(page, frames: int) -> str:
    page.wait_for_function(f"{FRAMES_DRAWN} >= {frames}")
    return page.evaluate("document.getElementById('view').toDataURL()")


def test_the_page_streams_takes_keys_and_downloads_a_recording_that_replays(
    chromium, world, world_model, tmp_path, monkeypatch
):
    calls = []  # (start, end, held codes) of each key message the server passed to the world
    set_held_keys = world.set_held_keys

    def logged(codes):
        start = time.monotonic()
        token = set_held_keys(codes)
        calls.append((start, time.monotonic(), list(codes)))
        return token

    monkeypatch.setattr(world, "set_held_keys", logged)
    world.start(world_model.clip_from_sample(0))
    with PlayServer(world, max_viewers=2).running() as url:
        page = chromium.new_page()
        page.goto(url)
        # The model's vocabulary, each token with its keys; the control the generator receives highlighted.
        page.wait_for_selector("#controls li.active")
        assert page.locator("#controls li").count() == len(world_model.vocabulary)
        assert page.inner_text("#controls li.active").split() == ["STAY", "no", "key"]
        assert page.inner_text("#controls li[data-token=JUMP] .keys") == "↑/W + ←/A"

        # Frames arrive and change; a second tab watches the same stream.
        first = canvas_after(page, 3)
        assert canvas_after(page, page.evaluate(FRAMES_DRAWN) + 4) != first
        other = chromium.new_page()
        other.goto(url)
        other.wait_for_function(f"{FRAMES_DRAWN} >= 2")
        other.close()

        # Record; hold left: the generator receives LEFT for the next group it asks for.
        page.click("#record")
        wait_until(lambda: world.state()["recording"] == "on")
        page.keyboard.down("ArrowLeft")
        start, end, _ = wait_until(lambda: [call for call in calls if call[2] == ["ArrowLeft"]])[0]
        page.wait_for_function(f"{CONTROL_ON_SCREEN} === 'LEFT'")
        asked = list(world_model.asked)
        assert all(tokens == ["STAY", "STAY"] for _, tokens, at in asked if at < start)
        assert [tokens for _, tokens, at in asked if at > end][0] == ["LEFT", "LEFT"]
        assert page.inner_text("#controls li.active").startswith("LEFT")
        assert page.inner_text("#latency").endswith(" ms") and float(page.inner_text("#fps")) > 0
        page.keyboard.up("ArrowLeft")
        page.wait_for_function(f"{CONTROL_ON_SCREEN} === 'STAY'")

        # Stop: the recording downloads and plays in the page.
        page.click("#record")
        page.wait_for_selector("#recording:not([hidden])")
        with page.expect_download() as download:
            page.click("#download")
        archive = tmp_path / "download.zip"
        download.value.save_as(archive)
        page.wait_for_function("document.getElementById('playback').readyState >= 2")
        duration = page.evaluate("document.getElementById('playback').duration")

        # Upload a video: the world starts from it.
        clip = write_mp4(moving_square_clip(3, 30, TINY_HEIGHT, TINY_WIDTH), tmp_path / "mine.mp4", fps=PLAY_FPS)
        page.set_input_files("#upload", str(clip))
        page.click("#upload-form button")
        page.wait_for_function("document.getElementById('status').textContent === 'playing: mine.mp4'")

    # The recording replays with inference.py, frame for frame, the pressed control drawn as it was played.
    folder = tmp_path / "recording"
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(folder)
    (segment,) = json.loads((folder / "replay.json").read_text())["segments"]
    controls = segment["arguments"][segment["arguments"].index("--controls") + 1].split(",")
    assert "LEFT" in controls
    monkeypatch.chdir(folder)
    inference.main(segment["arguments"])
    recording, replayed = read_frames(folder / "recording.mp4"), read_frames(folder / "replay-1.mp4")
    assert len(recording) == segment["frames"] and duration == pytest.approx(len(recording) / PLAY_FPS, abs=0.1)
    np.testing.assert_array_equal(recording, replayed[: len(recording)])
