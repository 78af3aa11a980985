"""The page's web server (aiohttp): the static page, JSON commands, and one WebSocket per tab for frames and keys.

The event loop only moves bytes. Frames come from the world's playback thread through ``call_soon_threadsafe``
into each tab's outbox, which holds the latest state and at most ``VIEWER_BUFFER_FRAMES`` frames: when a tab cannot
keep up, its oldest frames are dropped and counted (the page shows the count), so a slow or absent browser never
slows the world or grows the server. Commands that take a moment (reading a clip, writing a recording) run in
worker threads. Every tab sees the one stream and may steer it; past ``--max_viewers`` tabs are refused.

A frame is one binary message: a 4-byte big-endian header length, the JSON header, then the JPEG.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import json
import struct
import sys
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from aiohttp import WSCloseCode, WSMsgType, web

from thematrix.cli import USER_ERRORS
from thematrix.data.initial_clip import InitialClip
from thematrix.play.keymap import default_keymap, load_keymap
from thematrix.play.world import ShownFrame, World, WorldModel

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_HOST = "127.0.0.1"  # this machine only; --host 0.0.0.0 serves every interface
DEFAULT_PORT = 8000
DEFAULT_MAX_VIEWERS = 4
VIEWER_BUFFER_FRAMES = 2  # frames waiting for a slow tab before the oldest is dropped
# At Ctrl-C, how long a request still in flight may hold the exit: the page's requests are small and its sockets are
# closed first (``_on_shutdown``); aiohttp's default would hold a stalled one for a minute.
SHUTDOWN_TIMEOUT_S = 2.0
FRAME_HEADER_LENGTH = struct.Struct(">I")
UPLOAD_CHUNK_BYTES = 1 << 20
MAX_UPLOAD_BYTES = 1 << 30
UPLOAD_FIELD = "video"
BAD_REQUEST_ERRORS = (*USER_ERRORS, ValueError, RuntimeError)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The page's options, shared by every stage's play.py."""
    page = parser.add_argument_group("the page")
    page.add_argument("--host", default=DEFAULT_HOST, help="address to serve on (default: this machine only)")
    page.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to serve on (0: any free port)")
    page.add_argument(
        "--keymap",
        type=Path,
        default=None,
        help="key map file (JSON, see thematrix/play/keymap.py); default: derived from the vocabulary",
    )
    page.add_argument(
        "--output_dir", type=Path, default=Path("outputs/play"), help="recordings go to OUTPUT_DIR/recordings"
    )
    page.add_argument(
        "--max_viewers",
        type=int,
        default=DEFAULT_MAX_VIEWERS,
        help="tabs that may watch the stream at once; more are refused (default %(default)s)",
    )


def check_server_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before the model loads, what can be checked without it."""
    if args.max_viewers < 1:
        parser.error(f"--max_viewers must be at least 1, got {args.max_viewers}")
    if args.keymap is not None and not args.keymap.is_file():
        parser.error(f"--keymap {args.keymap}: no such file")


def encode_frame(frame: ShownFrame, dropped: int) -> bytes:
    header = json.dumps(dict(frame.header, dropped=dropped)).encode()
    return FRAME_HEADER_LENGTH.pack(len(header)) + header + frame.jpeg


async def json_body(request: web.Request) -> dict:
    """The request's JSON object; anything else answers 400."""
    try:
        body = await request.json()
    except json.JSONDecodeError as error:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"the body is not JSON: {error}"}), content_type="application/json"
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": "send a JSON object"}), content_type="application/json")
    return body


class Viewer:
    """One tab's outbox: the latest state and at most ``max_frames`` frames; the oldest frames give way, counted."""

    def __init__(self, max_frames: int = VIEWER_BUFFER_FRAMES):
        self.frames: deque[ShownFrame] = deque()
        self.max_frames = max_frames
        self.state: str | None = None
        self.dropped = 0
        self._wake = asyncio.Event()

    def push_frame(self, frame: ShownFrame) -> None:
        if len(self.frames) >= self.max_frames:
            self.frames.popleft()
            self.dropped += 1
        self.frames.append(frame)
        self._wake.set()

    def push_state(self, state: str) -> None:
        self.state = state
        self._wake.set()

    async def send(self, ws: web.WebSocketResponse) -> None:
        """Send what arrives, as fast as the tab takes it, until the tab goes."""
        with contextlib.suppress(ConnectionResetError):
            while not ws.closed:
                await self._wake.wait()
                self._wake.clear()
                if self.state is not None:
                    state, self.state = self.state, None
                    await ws.send_str(state)
                while self.frames:
                    await ws.send_bytes(encode_frame(self.frames.popleft(), self.dropped))


class PlayServer:
    """The aiohttp application around a ``World`` (which its creator closes)."""

    def __init__(self, world: World, max_viewers: int = DEFAULT_MAX_VIEWERS):
        self.world = world
        self.samples = world.model.sample_names()
        self.max_viewers = max_viewers
        self.viewers: dict[Viewer, web.WebSocketResponse] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.app = web.Application()
        self.app.router.add_get("/", self._page)
        self.app.router.add_static("/static/", STATIC_DIR)
        self.app.router.add_static("/recordings/", world.recordings_dir)
        self.app.router.add_get("/api/info", self._info)
        self.app.router.add_post("/api/start", self._start)
        self.app.router.add_post("/api/upload", self._upload)
        self.app.router.add_post("/api/prompt", self._prompt)
        self.app.router.add_post("/api/pause", self._pause)
        self.app.router.add_post("/api/restart", self._restart)
        self.app.router.add_post("/api/record", self._record)
        self.app.router.add_get("/ws", self._websocket)
        self.app.on_startup.append(self._on_startup)
        self.app.on_shutdown.append(self._on_shutdown)

    # Between the world's threads and the event loop.

    async def _on_startup(self, app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self.world.on_frame = lambda frame: self._call_in_loop(self._fan_out_frame, frame)
        self.world.on_state = lambda state: self._call_in_loop(self._fan_out_state, state)

    async def _on_shutdown(self, app: web.Application) -> None:
        """Stop sending and close the tabs' sockets, which would otherwise hold the shutdown until they time out."""
        self.world.on_frame = self.world.on_state = lambda _: None
        for ws in list(self.viewers.values()):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"the server is stopping")

    def _call_in_loop(self, callback, argument) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the server is shutting down
            self._loop.call_soon_threadsafe(callback, argument)

    def _fan_out_frame(self, frame: ShownFrame) -> None:
        for viewer in self.viewers:
            viewer.push_frame(frame)

    def _fan_out_state(self, state: dict) -> None:
        text = json.dumps({"type": "state", **state})
        for viewer in self.viewers:
            viewer.push_state(text)

    # Routes.

    async def _page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def _info(self, request: web.Request) -> web.Response:
        model = self.world.model
        vocabulary = model.vocabulary
        return web.json_response(
            {
                "vocabulary": [
                    {"token": token, "phrase": phrase} for token, phrase in zip(vocabulary.tokens, vocabulary.phrases)
                ],
                "keymap": self.world.keymap.to_json(),
                "fps": model.fps,
                "samples": self.samples,
                "state": self.world.state(),
            }
        )

    async def _command(self, action, *arguments) -> web.Response:
        """Run a world command in a worker thread; bad input answers 400 with its message."""
        try:
            await asyncio.to_thread(action, *arguments)
        except BAD_REQUEST_ERRORS as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response(self.world.state())

    async def _start(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        index = body.get("sample")
        if not self.samples:
            return web.json_response(
                {"error": "no dataset to start from: run play.py with --data_root and --index_file, or upload a video"},
                status=400,
            )
        if not isinstance(index, int) or not 0 <= index < len(self.samples):
            return web.json_response(
                {
                    "error": f"sample must be one of 0..{len(self.samples) - 1} (the dataset's usable clips), got {index!r}"
                },
                status=400,
            )
        return await self._command(
            lambda: self.world.start(self.world.model.clip_from_sample(index), body.get("prompt"))
        )

    async def _upload(self, request: web.Request) -> web.Response:
        """Save the uploaded video (field ``video``), read it as an initial clip and start from it."""
        reader = await request.multipart()
        part = await reader.next()
        if part is None or part.name != UPLOAD_FIELD or not part.filename:
            return web.json_response({"error": f"send the video as the multipart field {UPLOAD_FIELD!r}"}, status=400)
        folder = self.world.work_dir / "uploads"
        folder.mkdir(exist_ok=True)
        path = folder / f"{uuid.uuid4().hex}{Path(part.filename).suffix}"
        size = 0
        with path.open("wb") as file:
            while chunk := await part.read_chunk(UPLOAD_CHUNK_BYTES):
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    file.close()
                    path.unlink()
                    return web.json_response({"error": f"the video is over {MAX_UPLOAD_BYTES >> 20} MiB"}, status=413)
                file.write(chunk)

        def start() -> None:
            try:
                clip = self.world.model.clip_from_file(path)
            except BAD_REQUEST_ERRORS as error:  # decord's RuntimeError included: the file is not a video
                path.unlink()
                message = str(error).splitlines()[0].replace(str(path), part.filename)
                raise ValueError(f"the upload {part.filename} cannot start the world: {message}") from None
            self.world.start(dataclasses.replace(clip, name=part.filename))

        return await self._command(start)

    async def _prompt(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        return await self._command(self.world.set_prompt, str(body.get("prompt", "")))

    async def _pause(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        return await self._command(self.world.set_paused, bool(body.get("paused")))

    async def _restart(self, request: web.Request) -> web.Response:
        return await self._command(self.world.restart)

    async def _record(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        return await self._command(self.world.set_recording, bool(body.get("on")))

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if len(self.viewers) >= self.max_viewers:
            reason = (
                f"{len(self.viewers)} tabs are already watching this stream (--max_viewers {self.max_viewers}); "
                "close one and reload"
            )
            await ws.send_json({"type": "refused", "reason": reason})
            await ws.close()
            return ws
        viewer = Viewer()
        viewer.push_state(json.dumps({"type": "state", **self.world.state()}))
        self.viewers[viewer] = ws
        sender = asyncio.create_task(viewer.send(ws))
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._receive(message.data)
        finally:
            self.viewers.pop(viewer, None)
            sender.cancel()
        return ws

    def _receive(self, text: str) -> None:
        """A tab's message: ``{"type": "keys", "held": [KeyboardEvent.code, ...]}``; anything else is ignored."""
        try:
            message = json.loads(text)
        except json.JSONDecodeError:
            return
        if isinstance(message, dict) and message.get("type") == "keys" and isinstance(message.get("held"), list):
            self.world.set_held_keys([str(code) for code in message["held"]])

    # Serving.

    async def start(self, host: str, port: int) -> tuple[web.AppRunner, str]:
        """Serve on ``host:port`` (0: any free port); returns the runner and the page's address."""
        runner = web.AppRunner(self.app, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        return runner, f"http://{host}:{bound_port}/"

    async def serve_forever(self, host: str, port: int) -> None:
        runner, url = await self.start(host, port)
        print(f"play at {url} (Ctrl-C stops)", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    @contextlib.contextmanager
    def running(self, host: str = DEFAULT_HOST, port: int = 0) -> Iterator[str]:
        """Serve from a thread of its own while the block runs (for notebooks and tests); yields the page's address."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="play-server", daemon=True)
        thread.start()
        runner, url = asyncio.run_coroutine_threadsafe(self.start(host, port), loop).result()
        try:
            yield url
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()


def play(model: WorldModel, args: argparse.Namespace, first_clip: InitialClip | None) -> None:
    """Serve the page until interrupted; the world starts from ``first_clip`` if given, else from the page."""
    keymap = load_keymap(args.keymap, model.vocabulary) if args.keymap else default_keymap(model.vocabulary)
    world = World(model, keymap, args.output_dir / "recordings", args.output_dir)
    try:
        server = PlayServer(world, args.max_viewers)
        if first_clip is not None:
            world.start(first_clip, args.prompt)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(server.serve_forever(args.host, args.port))
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        sys.exit(f"error: {args.host}:{args.port} is in use; pass another --port (0: any free port)")
    finally:
        world.close()
