"""Training settings: typed defaults, config files that only assign, and command-line overrides.

A stage's config file is plain data::

    from stage1.training.arguments import LoraArgs
    args = LoraArgs()
    args.data_root = "/data/racing"   # why this value

Assigning a name that is not a setting raises at once, naming the file, the line and the
closest valid name, so a misspelt setting never silently keeps its default.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import runpy
import sys
import types
import typing
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar


class ConfigError(ValueError):
    """A setting that is unknown, mistyped or inconsistent; the message says where and how to fix it."""


def _caller_location(depth: int = 2) -> str:
    frame = sys._getframe(depth)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


@dataclasses.dataclass
class StrictArgs:
    """A dataclass whose instances refuse unknown attribute names."""

    def __setattr__(self, name: str, value: Any) -> None:
        known = {field.name for field in dataclasses.fields(self)}
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean args.{close[0]}?" if close else ""
            raise ConfigError(
                f"{_caller_location()}: args.{name} is not a setting of {type(self).__name__}.{hint}"
            )
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")


ArgsT = TypeVar("ArgsT", bound=StrictArgs)


def load_config(path: str | Path, expected: type[ArgsT]) -> ArgsT:
    """Run a config file and return its ``args``, checking it is the settings class the script needs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config with the path of a *_config.py")
    namespace = runpy.run_path(str(path))
    args = namespace.get("args")
    if args is None:
        raise ConfigError(f"{path}: defines no `args`; start it with `args = {expected.__name__}()`")
    if not isinstance(args, expected):
        raise ConfigError(
            f"{path}: `args` is a {type(args).__name__}, but this script trains with {expected.__name__}; "
            f"use `args = {expected.__name__}()`"
        )
    return args


def _parse_value(text: str, annotation: Any, name: str) -> Any:
    origin = typing.get_origin(annotation)
    type_args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in type_args:
        if text.lower() in ("none", "null", ""):
            return None
        (inner,) = [arg for arg in type_args if arg is not type(None)]
        return _parse_value(text, inner, name)
    if origin in (tuple, list):
        item_type = type_args[0] if type_args else str
        items = [_parse_value(item.strip(), item_type, name) for item in text.split(",") if item.strip()]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--{name} takes true or false, not {text!r}")
    try:
        return annotation(text)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name} takes a {getattr(annotation, '__name__', annotation)}, not {text!r}") from None


def apply_overrides(args: ArgsT, overrides: Sequence[str]) -> ArgsT:
    """Apply ``--name value`` pairs to ``args``, typed by the dataclass annotations."""
    hints = typing.get_type_hints(type(args))
    remaining = list(overrides)
    while remaining:
        flag = remaining.pop(0)
        if not flag.startswith("--"):
            raise ConfigError(f"expected --name value, got {flag!r}")
        name, _, value = flag[2:].partition("=")
        if not value:
            if not remaining:
                raise ConfigError(f"--{name} needs a value")
            value = remaining.pop(0)
        if name not in hints:
            close = difflib.get_close_matches(name, hints, n=1)
            hint = f" Did you mean --{close[0]}?" if close else ""
            raise ConfigError(f"--{name} is not a setting of {type(args).__name__}.{hint}")
        setattr(args, name, _parse_value(value, hints[name], name))
    return args


def parse_command_line(default_config: str | Path, expected: type[ArgsT], argv: Optional[Sequence[str]] = None) -> ArgsT:
    """``script.py [--config FILE] [--name value ...]``: the config file, then overrides on top."""
    parser = argparse.ArgumentParser(
        description=f"Train with the settings of a config file ({expected.__name__}); "
        "any setting can be overridden as --name value.",
    )
    parser.add_argument("--config", default=str(default_config), help="config file (default: %(default)s)")
    known, overrides = parser.parse_known_args(argv)
    args = load_config(known.config, expected)
    return apply_overrides(args, overrides)
