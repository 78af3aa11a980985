"use strict";
// The page: frames from the WebSocket onto the canvas as they come, the held keys to the server, commands by fetch.
// A frame message is a 4-byte big-endian header length, the JSON header, then the JPEG (see server.py).

const FRAME_HEADER_BYTES = 4;
const FPS_WINDOW_MS = 1000;
const FPS_REFRESH_MS = 250;
const SMALL_FRAME_WIDTH = 256; // narrower frames are scaled up without smoothing
const KEY_LABELS = { ArrowUp: "↑", ArrowDown: "↓", ArrowLeft: "←", ArrowRight: "→" };
const TYPING = "input, textarea, select";

const $ = (id) => document.getElementById(id);
const canvas = $("view");
const context = canvas.getContext("2d");
const held = new Set();
const drawTimes = [];
let socket = null;
let boundCodes = new Set();
let framesDrawn = 0;
let pageDropped = 0;
let decoding = false;
let waiting = null; // the newest frame received while one decodes; an older one waiting is dropped

function keyLabel(code) {
  return KEY_LABELS[code] || code.replace(/^(Key|Digit)/, "");
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

function renderControls(vocabulary, keymap) {
  const combinations = {};
  for (const [combination, token] of Object.entries(keymap.controls)) {
    const label = combination === ""
      ? "no key"
      : combination.split("+").map((button) => keymap.buttons[button].map(keyLabel).join("/")).join(" + ");
    (combinations[token] = combinations[token] || []).push(label);
  }
  boundCodes = new Set(Object.values(keymap.buttons).flat());
  const list = $("controls");
  list.replaceChildren(...vocabulary.map(({ token, phrase }) => {
    const item = document.createElement("li");
    item.dataset.token = token;
    item.title = phrase;
    const name = document.createElement("b");
    name.textContent = token;
    const keys = document.createElement("span");
    keys.className = "keys";
    keys.textContent = (combinations[token] || []).join(", ");
    item.append(name, keys);
    return item;
  }));
}

function showState(state) {
  $("status").textContent = !state.source ? "choose a clip to start from"
    : !state.running ? `stopped: ${state.source}`
    : state.paused ? `paused: ${state.source}` : `playing: ${state.source}`;
  showError(state.error);
  for (const item of $("controls").children) {
    item.classList.toggle("active", item.dataset.token === state.control);
  }
  $("pause").textContent = state.paused ? "Resume" : "Pause";
  $("record").textContent = state.recording === "off" ? "Record" : "Stop recording";
  $("record").classList.toggle("on", state.recording !== "off");
  $("record").dataset.state = state.recording;
  if (document.activeElement !== $("prompt")) $("prompt").value = state.prompt;
  if (state.last_recording && $("download").dataset.name !== state.last_recording) {
    const folder = state.last_recording.replace(/\.zip$/, "");
    $("download").dataset.name = state.last_recording;
    $("download").href = `/recordings/${state.last_recording}`;
    $("playback").src = `/recordings/${folder}/recording.mp4`;
    $("recording").hidden = false;
  }
}

function refreshFps() {
  const now = performance.now();
  while (drawTimes.length && now - drawTimes[0] > FPS_WINDOW_MS) drawTimes.shift();
  $("fps").textContent = (drawTimes.length * 1000 / FPS_WINDOW_MS).toFixed(1);
}

async function draw(buffer, received) {
  const headerLength = new DataView(buffer).getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, FRAME_HEADER_BYTES, headerLength)));
  const jpeg = new Blob([new Uint8Array(buffer, FRAME_HEADER_BYTES + headerLength)], { type: "image/jpeg" });
  const image = await createImageBitmap(jpeg);
  if (canvas.width !== image.width || canvas.height !== image.height) {
    canvas.width = image.width;
    canvas.height = image.height;
    canvas.classList.toggle("small", image.width < SMALL_FRAME_WIDTH);
  }
  context.drawImage(image, 0, 0);
  image.close();
  const now = performance.now();
  framesDrawn += 1;
  canvas.dataset.frames = framesDrawn;
  canvas.dataset.control = header.control;
  drawTimes.push(now);
  refreshFps();
  if (header.latency_ms !== null) {
    // The server measured key-to-send; add this frame's time from arrival to the screen.
    $("latency").textContent = `${Math.round(header.latency_ms + now - received)} ms`;
  }
  $("dropped").textContent = header.dropped + pageDropped;
  $("generation-fps").textContent = header.generation_fps === null ? "–" : header.generation_fps.toFixed(1);
  $("frame-control").textContent = header.control;
}

async function receiveFrame(buffer) {
  const received = performance.now();
  if (decoding) {
    if (waiting) pageDropped += 1;
    waiting = { buffer, received };
    return;
  }
  decoding = true;
  let next = { buffer, received };
  while (next) {
    try {
      await draw(next.buffer, next.received);
    } catch (error) {
      showError(`a frame could not be shown: ${error}`);
    }
    next = waiting;
    waiting = null;
  }
  decoding = false;
}

function sendKeys() {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ type: "keys", held: [...held] }));
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${location.host}/ws`);
  socket.binaryType = "arraybuffer";
  socket.onmessage = (event) => {
    if (typeof event.data !== "string") {
      receiveFrame(event.data);
      return;
    }
    const message = JSON.parse(event.data);
    if (message.type === "state") showState(message);
    if (message.type === "refused") {
      $("status").textContent = "refused";
      showError(message.reason);
      socket.onclose = null;
    }
  };
  socket.onclose = () => {
    $("status").textContent = "disconnected: reload the page when the server runs again";
  };
}

async function post(path, body) {
  const response = await fetch(path, body instanceof FormData
    ? { method: "POST", body }
    : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });
  const answer = await response.json();
  showError(response.ok ? "" : answer.error);
  if (response.ok) showState(answer);
}

document.addEventListener("keydown", (event) => {
  if (!boundCodes.has(event.code) || event.target.matches(TYPING)) return;
  event.preventDefault();
  if (!held.has(event.code)) {
    held.add(event.code);
    sendKeys();
  }
});
document.addEventListener("keyup", (event) => {
  if (held.delete(event.code)) sendKeys();
});
window.addEventListener("blur", () => {
  held.clear();
  sendKeys();
});

$("start-form").addEventListener("submit", (event) => {
  event.preventDefault();
  post("/api/start", { sample: Number($("samples").value) });
});
$("upload-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const file = $("upload").files[0];
  if (!file) return showError("choose a video file first");
  const form = new FormData();
  form.append("video", file);
  post("/api/upload", form);
});
$("prompt-form").addEventListener("submit", (event) => {
  event.preventDefault();
  post("/api/prompt", { prompt: $("prompt").value });
  $("prompt").blur();
});
$("pause").addEventListener("click", () => post("/api/pause", { paused: $("pause").textContent === "Pause" }));
$("restart").addEventListener("click", () => post("/api/restart"));
$("record").addEventListener("click", () => post("/api/record", { on: $("record").dataset.state === "off" }));
// A clicked button lets go of the focus, so that the keys steer the world instead of pressing it again.
document.addEventListener("click", (event) => event.target.closest("button")?.blur());

async function init() {
  const info = await (await fetch("/api/info")).json();
  renderControls(info.vocabulary, info.keymap);
  $("samples").replaceChildren(...info.samples.map((name, index) => new Option(name, index)));
  $("start-form").hidden = info.samples.length === 0;
  showState(info.state);
  connect();
  setInterval(refreshFps, FPS_REFRESH_MS);
}

init();
