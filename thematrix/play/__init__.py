"""Playing a streaming model live in a local web page: ``stage3/play.py`` and ``stage4/play.py`` serve it.

- ``world``: the stream in a generation thread and a playback thread, the player's control, recordings;
- ``server``: the aiohttp server (page, commands, one WebSocket per tab) that only moves bytes;
- ``keymap``: the player's keys to the model's control tokens;
- ``recording``: what is recorded and how it replays with inference.py;
- ``static/``: the page (plain HTML, CSS and JavaScript: canvas, WebSocket and fetch; no build step, works offline).
"""
