"""Training settings: typed defaults, config files that only assign, and command-line overrides.

A stage's config file is plain data::

    from stage1.training.arguments import LoraArgs
    args = LoraArgs()
    args.data_root = "/data/racing"   # why this value

Assigning a name that is not a setting raises at once, naming the file, the line and the
closest valid name, so a misspelt setting never silently keeps its default. Each value must be of its
setting's declared type (an int will do for a number, a list for a list setting), checked when the file is loaded.

On the command line every setting is ``--name value``. A list setting takes several values after
its flag (``--frame_buckets 17 33 65``) or one JSON list (``--validation_prompts '["A, b", "C"]'``);
a single value is one item, and a comma inside a value is never a separator.

Settings that are paths are marked ``Annotated[str, PathSetting()]`` (``LocalPath``, ``ModelPath``).
Relative paths from a config file (and the defaults) are relative to the stage folder, the folder of
the training script where the launcher runs; relative paths on the command line are relative to the
current directory. Both become absolute when read, so the saved config says exactly what was used.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import io
import json
import os
import re
import runpy
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

from thematrix.hub import looks_like_hub_id


class ConfigError(ValueError):
    """A setting that is unknown, mistyped or inconsistent; the message says where and how to fix it."""


@dataclasses.dataclass(frozen=True)
class PathSetting:
    """Marks a string setting as a path, resolved as the module docstring says.

    keywords: values that are not paths (e.g. ``"latest"``).
    hub_id: the value may be a Hugging Face model id (``namespace/name``), kept as it is when no such
        path exists.
    """

    keywords: tuple[str, ...] = ()
    hub_id: bool = False


LocalPath = Annotated[str, PathSetting()]
ModelPath = Annotated[str, PathSetting(hub_id=True)]

NONE_WORDS = ("none", "null")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
JSON_LIST_START = "["
_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
# How a config file's error names a type: config files are Python, so a boolean is True or False.
_CONFIG_TYPE_WORDS = {**_TYPE_WORDS, bool: "True or False"}
_PLURAL_TYPE_WORDS = {int: "integers", float: "numbers", str: "strings", bool: "True/False values"}
_VALUE_WORDS = {str: "the string", int: "the integer", float: "the number"}
# "# --- model and data ----" heads a group of settings in an arguments.py file.
_SECTION_COMMENT = re.compile(r"^#\s*-{3,}\s*(?P<title>.*?)\s*-*$")
HELP_WIDTH = 100
HELP_INDENT = "      "


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
            raise ConfigError(f"{_caller_location()}: args.{name} is not a setting of {type(self).__name__}.{hint}")
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")


ArgsT = TypeVar("ArgsT", bound=StrictArgs)


def first_given(*values: Any) -> Any:
    """The first value that is not None: a setting given as "" (the empty prompt) or 0 is given, not unset."""
    return next((value for value in values if value is not None), None)


def setting_from_model(name: str, value: Any, model_value: Any, model: str) -> Any:
    """A setting that the input model records: unset (None) it takes the model's value; set, it must agree.

    ``name`` is how the user writes the setting (``args.fps``, ``--fps``), ``model`` names the model (``the
    model at DIR``); a disagreement is an error naming both values. Returns None when neither says anything.
    """
    if value is None:
        return model_value
    if model_value is not None and value != model_value:
        raise ConfigError(
            f"{name} is {value!r}, but {model} was trained with {model_value!r}. Fix: leave {name} unset to take "
            f"the model's value, or set it to {model_value!r}"
        )
    return value


# ---------------------------------------------------------------- types and paths


def _setting_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _without_none(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without ``Optional``, whether None is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if type(None) in members:
            (inner,) = [member for member in members if member is not type(None)]
            return inner, True
    return annotation, False


def _path_setting(annotation: Any) -> PathSetting | None:
    annotation, _ = _without_none(annotation)
    if typing.get_origin(annotation) is Annotated:
        return next((mark for mark in annotation.__metadata__ if isinstance(mark, PathSetting)), None)
    return None


def path_settings(cls: type) -> dict[str, PathSetting]:
    """The path settings of ``cls``: marked in any of its classes, so a subclass that redeclares a default
    (``output_dir: str = ...``) keeps the mark."""
    marks: dict[str, PathSetting] = {}
    for ancestor in reversed(cls.__mro__):
        if dataclasses.is_dataclass(ancestor):
            for name, annotation in _setting_types(ancestor).items():
                mark = _path_setting(annotation)
                if mark is not None:
                    marks.setdefault(name, mark)
    return marks


def _base_type(annotation: Any) -> Any:
    annotation, _ = _without_none(annotation)
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation


def resolve_path(value: str, setting: PathSetting, base_dir: Path) -> str:
    """``value`` as an absolute path, relative ones taken from ``base_dir``; keywords and hub ids stay as they are."""
    if value in setting.keywords:
        return value
    path = Path(value).expanduser()
    resolved = Path(os.path.abspath(base_dir / path))
    if setting.hub_id and not path.is_absolute() and not resolved.exists() and looks_like_hub_id(value):
        return value
    return str(resolved)


def resolve_paths(args: StrictArgs, base_dir: Path, names: Sequence[str] | None = None) -> None:
    """Make the path settings ``names`` (default: all) of ``args`` absolute, relative ones taken from ``base_dir``."""
    for name, setting in path_settings(type(args)).items():
        value = getattr(args, name)
        if isinstance(value, str) and (names is None or name in names):
            object.__setattr__(args, name, resolve_path(value, setting, base_dir))


# ---------------------------------------------------------------- config files


def stage_folder(default_config: str | Path) -> Path:
    """The folder of a stage's training script, from its default config (``<stage>/training/*_config.py``)."""
    return Path(default_config).resolve().parent.parent


def load_config(path: str | Path, expected: type[ArgsT], base_dir: Path | None = None) -> ArgsT:
    """Run a config file and return its ``args``, checking it is the settings class the script needs.

    With ``base_dir``, relative path settings (assigned or default) become absolute paths under it.
    """
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
    check_setting_types(args, str(path))
    if base_dir is not None:
        resolve_paths(args, base_dir)
    return args


def _is_of_type(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is a value of the scalar type ``annotation``: an int is a number too, but a bool is no
    number and a number no bool (``True`` is an int to Python, never to a setting)."""
    if isinstance(value, bool):
        return annotation is bool
    if annotation is float:
        return isinstance(value, (int, float))
    return isinstance(value, annotation)


def _describe_value(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return repr(value)
    return f"{_VALUE_WORDS.get(type(value), f'the {type(value).__name__}')} {value!r}"


def _type_error(where: str, value: Any, annotation: Any, nullable: bool) -> ConfigError:
    """What ``where`` (``FILE: args.NAME``) takes, what it got, and, where the value's intent is plain, what to write."""
    fix = ""
    if typing.get_origin(annotation) in (tuple, list):
        item_type = typing.get_args(annotation)[0]
        expected = f"a list of {_PLURAL_TYPE_WORDS[item_type]}"
        if _is_of_type(value, item_type):
            fix = f"; write [{value!r}]"
        elif isinstance(value, (list, tuple)):
            wrong = next(item for item in value if not _is_of_type(item, item_type))
            fix = f", whose item {wrong!r} is not {_CONFIG_TYPE_WORDS[item_type]}"
    else:
        expected = _CONFIG_TYPE_WORDS[annotation]
        if annotation is int and isinstance(value, float) and value.is_integer():
            fix = f"; write {int(value)}"
        elif annotation is bool and value in (0, 1) and not isinstance(value, bool):
            fix = f"; write {bool(value)}"
    return ConfigError(f"{where} takes {expected}{' or None' if nullable else ''}, got {_describe_value(value)}{fix}")


def check_setting_types(args: StrictArgs, source: str) -> None:
    """Check every setting of ``args`` against its declared type, naming ``source`` (the config file) in errors,
    since a wrong type fails late or not at all: a string given for a list setting iterates as one-letter items.

    Values are stored as their setting's type: a list for a tuple setting becomes a tuple, an int for a number a
    float, and a path setting takes any path object as a string.
    """
    hints = _setting_types(type(args))
    paths = path_settings(type(args))
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        annotation, nullable = _without_none(hints[field.name])
        annotation = _base_type(annotation)
        origin = typing.get_origin(annotation)
        if value is None and nullable:
            continue
        if field.name in paths and isinstance(value, os.PathLike):
            typed = os.fspath(value)
        elif origin in (tuple, list) and isinstance(value, (list, tuple)):
            item_type = typing.get_args(annotation)[0]
            if not all(_is_of_type(item, item_type) for item in value):
                raise _type_error(f"{source}: args.{field.name}", value, annotation, nullable)
            typed = origin(item_type(item) for item in value)
        elif origin is None and _is_of_type(value, annotation):
            typed = annotation(value)
        else:
            raise _type_error(f"{source}: args.{field.name}", value, annotation, nullable)
        object.__setattr__(args, field.name, typed)


# ---------------------------------------------------------------- command line


def _parse_scalar(text: str, annotation: Any, name: str) -> Any:
    if annotation is bool:
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise ConfigError(f"--{name} takes true or false, not {text!r}")
    try:
        return annotation(text)
    except (TypeError, ValueError):
        kind = _TYPE_WORDS.get(annotation, getattr(annotation, "__name__", str(annotation)))
        raise ConfigError(f"--{name} takes {kind}, not {text!r}") from None


def _json_item(item: Any, annotation: Any, name: str) -> Any:
    """One item of a JSON list as the setting's item type (JSON 1 is a float where floats are expected)."""
    if _is_of_type(item, annotation):
        return annotation(item)
    raise ConfigError(
        f"--{name}: the JSON list holds {json.dumps(item)}, but each item must be {_TYPE_WORDS[annotation]}"
    )


def _parse_list(values: list[str], item_type: Any, name: str) -> list:
    if len(values) == 1 and values[0].lstrip().startswith(JSON_LIST_START):
        try:
            items = json.loads(values[0])
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"--{name} {values[0]!r} starts with {JSON_LIST_START!r} but is not a JSON list ({error}); write a "
                f'JSON list, e.g. \'["first", "second"]\', which also passes an item that starts with {JSON_LIST_START!r}'
            ) from None
        if not isinstance(items, list):
            raise ConfigError(f"--{name} {values[0]!r} is JSON but not a list")
        return [_json_item(item, item_type, name) for item in items]
    try:
        return [_parse_scalar(value, item_type, name) for value in values]
    except ConfigError as error:
        raise ConfigError(
            f"{error}; a list setting takes its items as several values after the flag "
            f"(--{name} A B C) or as one JSON list (--{name} '[...]')"
        ) from None


def parse_setting(values: list[str], annotation: Any, name: str) -> Any:
    """The values after ``--name`` as the setting's type (paths are not resolved here)."""
    inner, nullable = _without_none(annotation)
    inner = _base_type(inner)
    if nullable and len(values) == 1 and values[0].lower() in (*NONE_WORDS, ""):
        return None
    origin = typing.get_origin(inner)
    if origin in (tuple, list):
        item_args = typing.get_args(inner)
        items = _parse_list(values, item_args[0] if item_args else str, name)
        return tuple(items) if origin is tuple else items
    if len(values) != 1:
        raise ConfigError(f"--{name} takes one value, got {len(values)}: {values}; quote a value that has spaces")
    return _parse_scalar(values[0], inner, name)


def apply_overrides(args: ArgsT, overrides: Sequence[str], base_dir: Path | None = None) -> ArgsT:
    """Apply ``--name value [value ...]`` to ``args``, typed by the dataclass annotations.

    Relative paths become absolute under ``base_dir`` (default: the current directory).
    """
    hints = _setting_types(type(args))
    remaining = list(overrides)
    while remaining:
        flag = remaining.pop(0)
        if not flag.startswith("--"):
            raise ConfigError(f"expected --name value, got {flag!r}")
        name, equals, value = flag[2:].partition("=")
        if name not in hints:
            close = difflib.get_close_matches(name, hints, n=1)
            hint = f" Did you mean --{close[0]}?" if close else ""
            raise ConfigError(f"--{name} is not a setting of {type(args).__name__}.{hint}")
        values = [value] if equals else []
        while remaining and not remaining[0].startswith("--"):
            values.append(remaining.pop(0))
        if not values:
            raise ConfigError(f"--{name} needs a value")
        setattr(args, name, parse_setting(values, hints[name], name))
        resolve_paths(args, Path.cwd() if base_dir is None else base_dir, names=[name])
    return args


# ---------------------------------------------------------------- --help from the settings' comments


@dataclasses.dataclass
class SettingDoc:
    section: str | None  # the "# --- title ---" above the setting, if any
    doc: str  # the comment lines right above the setting and its inline comment
    defined_in: type  # the class whose body first declares the setting


def _comments_by_row(source: str) -> tuple[dict[int, str], set[int]]:
    """Comment text per source row, and the rows that hold nothing but a comment."""
    comments, whole_line = {}, set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row = token.start[0]
            comments[row] = token.string.lstrip("#").strip()
            if not token.line[: token.start[1]].strip():
                whole_line.add(row)
    return comments, whole_line


def _class_setting_docs(cls: type) -> dict[str, tuple[str | None, str]]:
    """name -> (section, doc) for each setting that ``cls``'s own body declares, read from its comments."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    source = textwrap.dedent("".join(lines))
    comments, whole_line = _comments_by_row(source)
    sections = {
        row: match["title"]
        for row, text in comments.items()
        if row in whole_line and (match := _SECTION_COMMENT.match(f"# {text}"))
    }
    docs = {}
    for statement in ast.parse(source).body[0].body:
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        above, row = [], statement.lineno - 1
        while row in whole_line and row not in sections:
            above.insert(0, comments[row])
            row -= 1
        inline = [
            comments[row]
            for row in range(statement.lineno, statement.end_lineno + 1)
            if row in comments and row not in whole_line
        ]
        heading = max((row for row in sections if row < statement.lineno), default=None)
        docs[statement.target.id] = (sections.get(heading), " ".join(above + inline))
    return docs


def setting_docs(cls: type) -> dict[str, SettingDoc]:
    """Section, doc and defining class of every setting of ``cls``, from the comments in its classes' source.

    A subclass that redeclares a setting keeps its parent's section, and its parent's doc unless it has its own.
    """
    result: dict[str, SettingDoc] = {}
    for ancestor in reversed(cls.__mro__):
        if not (dataclasses.is_dataclass(ancestor) and issubclass(ancestor, StrictArgs)):
            continue
        for name, (section, doc) in _class_setting_docs(ancestor).items():
            if name in result:
                result[name].doc = doc or result[name].doc
            else:
                result[name] = SettingDoc(section, doc, ancestor)
    return result


def _type_label(annotation: Any, path: PathSetting | None) -> str:
    inner, nullable = _without_none(annotation)
    if path is not None:
        label = "|".join(["PATH_OR_HUB_ID" if path.hub_id else "PATH", *path.keywords])
    elif typing.get_origin(inner) in (tuple, list):
        item = typing.get_args(inner)[0].__name__.upper()
        label = f"{item} [{item} ...]"
    elif inner is bool:
        label = "true|false"
    else:
        label = inner.__name__.upper()
    return label + ("|none" if nullable else "")


def _source_file(cls: type) -> str:
    path = Path(inspect.getfile(cls)).resolve()
    root = Path(__file__).resolve().parents[1]
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def settings_help(cls: type, configured: StrictArgs | None = None, config_name: str = "the config file") -> str:
    """Every setting of ``cls`` with its type, default (and ``configured``'s value where it differs) and doc."""
    docs = setting_docs(cls)
    types_ = _setting_types(cls)
    paths = path_settings(cls)
    groups: dict[str, list[str]] = {}
    for field in dataclasses.fields(cls):
        doc = docs.get(field.name, SettingDoc(None, "", cls))
        group = f"{doc.section or doc.defined_in.__name__} ({_source_file(doc.defined_in)})"
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        value = f"default: {default!r}"
        if configured is not None and getattr(configured, field.name) != default:
            value += f"; {config_name}: {getattr(configured, field.name)!r}"
        entry = [f"  --{field.name} {_type_label(types_[field.name], paths.get(field.name))}"]
        entry += textwrap.wrap(
            f"{doc.doc} [{value}]" if doc.doc else f"[{value}]",
            HELP_WIDTH,
            initial_indent=HELP_INDENT,
            subsequent_indent=HELP_INDENT,
            break_long_words=False,
            break_on_hyphens=False,
        )
        groups.setdefault(group, []).extend(entry)
    return "\n\n".join(f"{group}:\n" + "\n".join(entries) for group, entries in groups.items())


def parse_command_line(
    default_config: str | Path,
    expected: type[ArgsT],
    argv: Sequence[str] | None = None,
    stage_dir: Path | None = None,
) -> ArgsT:
    """``script.py [--config FILE] [--name value ...]``: the config file, then overrides on top.

    Relative paths in the config file are relative to ``stage_dir`` (default: the stage folder of
    ``default_config``); those on the command line to the current directory.
    """
    stage_dir = stage_folder(default_config) if stage_dir is None else stage_dir
    parser = argparse.ArgumentParser(
        description=textwrap.fill(
            f"Train with the settings of a config file ({expected.__name__}); any setting can be overridden as "
            "--name value. A list setting takes several values (--frame_buckets 17 33 65) or a JSON list. Relative "
            f"paths in the config file are relative to {stage_dir}; here, to the current directory.",
            HELP_WIDTH,
            break_long_words=False,
            break_on_hyphens=False,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    parser.add_argument("-h", "--help", action="store_true", help="list every setting, its default and what it does")
    parser.add_argument(
        "--config",
        default=str(default_config),
        help=f"config file (default: {os.path.relpath(default_config, stage_dir)} in {stage_dir.name}/)",
    )
    known, overrides = parser.parse_known_args(argv)
    if known.help:
        try:
            configured = load_config(known.config, expected, stage_dir)
        except ConfigError:
            configured = None
        parser.epilog = "settings:\n\n" + settings_help(expected, configured, Path(known.config).name)
        parser.print_help()
        parser.exit()
    args = load_config(known.config, expected, stage_dir)
    return apply_overrides(args, overrides)
