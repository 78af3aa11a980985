"""The player's keys to the model's control tokens.

A key map names buttons, each one or more ``KeyboardEvent.code`` values (``"ArrowUp"``, ``"KeyW"``), and
maps combinations of held buttons to tokens. The most specific combination whose buttons are all held
wins (ties go to the one listed first); the empty combination ``""`` is the control while no button is
held. A map without it latches: the last token stays until another combination is held. As a file (JSON)::

    {"buttons": {"up": ["ArrowUp", "KeyW"], "left": ["ArrowLeft", "KeyA"], "right": ["ArrowRight", "KeyD"]},
     "controls": {"": "STAND", "up": "WALK", "up+left": "WALK_LEFT", "up+right": "WALK_RIGHT", "left": "TURN_LEFT",
                  "right": "TURN_RIGHT"}}

Default maps: a game file (data/games/*.json) whose tokens are the model's may give its own key map under
``"keys"`` (the car's: arrows and WASD); any other vocabulary gets one latching key per token, 1..9 and 0, then
the letter rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from thematrix.controls import (
    GAME_KEYMAP_KEY,
    TOKENS_KEY,
    ControlError,
    ControlVocabulary,
    game_files,
    read_json_object,
)

COMBINATION_SEPARATOR = "+"
REST = ""  # the combination of no buttons: the control while nothing is held

# Latching keys for a vocabulary without a game key map, in token order: the digit row, then the letter rows.
SELECTION_KEYS = tuple(f"Digit{digit}" for digit in "1234567890") + tuple(
    f"Key{letter}" for letter in "QWERTYUIOPASDFGHJKLZXCVBNM"
)


class KeyMapError(ControlError):
    """A key map that cannot drive the model's vocabulary."""


@dataclass(frozen=True)
class KeyMap:
    """Buttons (name -> key codes) and combinations of held buttons (name set -> token), checked at construction."""

    buttons: Mapping[str, tuple[str, ...]]
    controls: Mapping[frozenset[str], str]

    @classmethod
    def from_json(cls, data: object, vocabulary: ControlVocabulary, source: str) -> KeyMap:
        """Build from ``{"buttons": ..., "controls": ...}``; every problem names ``source``, the field and the fix."""
        if not isinstance(data, dict) or set(data) != {"buttons", "controls"}:
            raise KeyMapError(f'{source}: a key map is {{"buttons": {{...}}, "controls": {{...}}}}; got {data!r:.200}')
        buttons, controls = data["buttons"], data["controls"]
        if not isinstance(buttons, dict) or not buttons:
            raise KeyMapError(
                f'{source}: "buttons" must map button names to lists of key codes, e.g. {{"up": ["ArrowUp"]}}'
            )
        for name, codes in buttons.items():
            if not name or COMBINATION_SEPARATOR in name:
                raise KeyMapError(
                    f'{source}: buttons: name {name!r} must be non-empty and without "{COMBINATION_SEPARATOR}"'
                )
            if not isinstance(codes, list) or not codes or not all(isinstance(code, str) and code for code in codes):
                raise KeyMapError(
                    f'{source}: buttons["{name}"]: give a list of KeyboardEvent.code values, e.g. ["ArrowUp", "KeyW"]'
                )
        if not isinstance(controls, dict) or not controls:
            raise KeyMapError(f'{source}: "controls" must map button combinations ("up+left") to control tokens')
        combinations = {}
        for combination, token in controls.items():
            held = frozenset(combination.split(COMBINATION_SEPARATOR)) if combination else frozenset()
            unknown = sorted(held - set(buttons))
            if unknown:
                raise KeyMapError(
                    f'{source}: controls["{combination}"]: unknown buttons {unknown}; define them under "buttons"'
                )
            if held in combinations:
                raise KeyMapError(f'{source}: controls["{combination}"]: the same buttons as another combination')
            try:
                vocabulary.token_id(token)
            except ControlError as error:
                raise KeyMapError(f'{source}: controls["{combination}"]: {error}') from None
            combinations[held] = token
        missing = [token for token in vocabulary.tokens if token not in combinations.values()]
        if missing:
            raise KeyMapError(
                f"{source}: no combination gives the tokens {missing}; bind a combination of buttons to each"
            )
        return cls({name: tuple(codes) for name, codes in buttons.items()}, combinations)

    @property
    def rest_token(self) -> str | None:
        """The token while no button is held; None for a latching map."""
        return self.controls.get(frozenset())

    def resolve(self, held_codes: Iterable[str]) -> str | None:
        """The token of the held keys: the most specific bound combination of held buttons, or None if none is bound."""
        codes = set(held_codes)
        held = {name for name, button_codes in self.buttons.items() if codes.intersection(button_codes)}
        best = None
        for combination, token in self.controls.items():
            if combination and combination <= held and (best is None or len(combination) > len(best[0])):
                best = (combination, token)
        return best[1] if best else self.rest_token

    def to_json(self) -> dict:
        """The file form, for the page (which shows each token's keys)."""
        return {
            "buttons": {name: list(codes) for name, codes in self.buttons.items()},
            "controls": {
                COMBINATION_SEPARATOR.join(name for name in self.buttons if name in held): token
                for held, token in self.controls.items()
            },
        }


def selection_keymap(tokens: Sequence[str]) -> dict:
    """One latching key per token, in order (file form)."""
    if len(tokens) > len(SELECTION_KEYS):
        raise KeyMapError(
            f"the vocabulary has {len(tokens)} tokens, more than the {len(SELECTION_KEYS)} selection keys; "
            "give a key map file with --keymap"
        )
    keys = SELECTION_KEYS[: len(tokens)]
    return {"buttons": {code: [code] for code in keys}, "controls": dict(zip(keys, tokens))}


def default_keymap(vocabulary: ControlVocabulary) -> KeyMap:
    """The key map of the game file whose tokens are ``vocabulary``'s, if it gives one; else one latching key per
    token."""
    for path in game_files():
        game = read_json_object(path, "game file")
        if GAME_KEYMAP_KEY in game and set(game.get(TOKENS_KEY, ())) == set(vocabulary.tokens):
            return KeyMap.from_json(game[GAME_KEYMAP_KEY], vocabulary, f"{path}: {GAME_KEYMAP_KEY}")
    return KeyMap.from_json(selection_keymap(vocabulary.tokens), vocabulary, "the default key map")


def load_keymap(path: str | Path, vocabulary: ControlVocabulary) -> KeyMap:
    """A key map file (JSON, see the module docstring), checked against the model's vocabulary."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--keymap {path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise KeyMapError(f"--keymap {path}: not JSON ({error})") from None
    return KeyMap.from_json(data, vocabulary, f"--keymap {path}")
