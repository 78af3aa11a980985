"""Config files and command-line overrides: strict names, typed values, clear errors."""

from __future__ import annotations

import pytest

from stage1.training.arguments import LoraArgs
from thematrix.config import ConfigError, apply_overrides, load_config
from thematrix.training.arguments import TrainingArgs


def write_config(tmp_path, body: str):
    path = tmp_path / "my_config.py"
    path.write_text("from stage1.training.arguments import LoraArgs\nargs = LoraArgs()\n" + body)
    return path


def test_config_file_values_are_read(tmp_path):
    args = load_config(write_config(tmp_path, "args.rank = 4\nargs.frame_buckets = (9,)\n"), LoraArgs)
    assert args.rank == 4 and args.frame_buckets == (9,)
    assert args.learning_rate == LoraArgs().learning_rate


def test_misspelt_setting_names_file_line_and_suggestion(tmp_path):
    path = write_config(tmp_path, "args.rank = 4\nargs.learning_rat = 1e-4\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, LoraArgs)
    message = str(error.value)
    assert f"{path}:4" in message and "args.learning_rat" in message and "args.learning_rate" in message


def test_config_of_another_stage_is_refused(tmp_path):
    path = tmp_path / "other.py"
    path.write_text("from thematrix.training.arguments import TrainingArgs\nargs = TrainingArgs()\n")
    with pytest.raises(ConfigError, match="use `args = LoraArgs\\(\\)`"):
        load_config(path, LoraArgs)


def test_overrides_are_typed():
    args = apply_overrides(
        LoraArgs(),
        ["--rank", "16", "--learning_rate=3e-4", "--gradient_checkpointing", "false",
         "--frame_buckets", "9,17", "--cache_dir", "none", "--validation_prompts", "a car,a track"],
    )
    assert args.rank == 16 and args.learning_rate == 3e-4 and args.gradient_checkpointing is False
    assert args.frame_buckets == (9, 17) and args.cache_dir is None
    assert args.validation_prompts == ("a car", "a track")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["--rnak", "4"], "Did you mean --rank"),
        (["--rank", "four"], "--rank takes a int"),
        (["--gradient_checkpointing", "maybe"], "true or false"),
        (["--rank"], "needs a value"),
    ],
)
def test_bad_overrides_say_what_is_wrong(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        apply_overrides(LoraArgs(), overrides)


def test_bucket_and_precision_checks():
    args = TrainingArgs()
    args.mixed_precision = "fp8"
    with pytest.raises(ConfigError, match="mixed_precision"):
        args.check()
