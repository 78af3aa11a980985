"""Config files and command-line overrides: strict names, typed values, clear errors."""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from stage1.training.arguments import LoraArgs
from stage2.training.arguments import SftArgs
from stage3.training.arguments import SwinArgs
from stage4.training.arguments import ScmArgs
from thematrix.config import (
    ConfigError,
    apply_overrides,
    first_given,
    load_config,
    parse_command_line,
    setting_docs,
    settings_help,
)
from thematrix.training.arguments import TrainingArgs

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGE1 = REPO_ROOT / "stage1"


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


@pytest.mark.parametrize(
    "assignment, expected",
    [
        (
            "args.validation_prompts = 'A dark corridor'",
            "args.validation_prompts takes a list of strings or None, got the string 'A dark corridor'; "
            "write ['A dark corridor']",
        ),
        ("args.frame_buckets = 17", "args.frame_buckets takes a list of integers, got the integer 17; write [17]"),
        (
            "args.frame_buckets = (17, '33')",
            "args.frame_buckets takes a list of integers, got the tuple (17, '33'), whose item '33' is not an integer",
        ),
        ("args.rank = 4.0", "args.rank takes an integer, got the number 4.0; write 4"),
        ("args.rank = True", "args.rank takes an integer, got True"),
        ("args.rank = None", "args.rank takes an integer, got None"),
        (
            "args.gradient_checkpointing = 1",
            "args.gradient_checkpointing takes True or False, got the integer 1; write True",
        ),
        ("args.learning_rate = '1e-4'", "args.learning_rate takes a number, got the string '1e-4'"),
        ("args.caption_p_zero = False", "args.caption_p_zero takes a number, got False"),
        ("args.data_root = 3", "args.data_root takes a string, got the integer 3"),
    ],
)
def test_config_values_of_the_wrong_type_name_file_setting_value_and_fix(tmp_path, assignment, expected):
    path = write_config(tmp_path, assignment + "\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, LoraArgs)
    assert str(error.value) == f"{path}: {expected}"


def test_config_values_are_stored_as_their_settings_types(tmp_path):
    body = (
        "from pathlib import Path\n"
        "args.learning_rate = 1\nargs.frame_buckets = [9, 17]\nargs.validation_prompts = ['a door']\n"
        "args.data_root = Path('/footage')\nargs.cache_dir = None\n"
    )
    args = load_config(write_config(tmp_path, body), LoraArgs)
    assert args.learning_rate == 1.0 and isinstance(args.learning_rate, float)
    assert args.frame_buckets == (9, 17) and args.validation_prompts == ("a door",)
    assert args.data_root == "/footage" and args.cache_dir is None


def test_config_of_another_stage_is_refused(tmp_path):
    path = tmp_path / "other.py"
    path.write_text("from thematrix.training.arguments import TrainingArgs\nargs = TrainingArgs()\n")
    with pytest.raises(ConfigError, match="use `args = LoraArgs\\(\\)`"):
        load_config(path, LoraArgs)


def test_overrides_are_typed():
    args = apply_overrides(
        LoraArgs(),
        [
            "--rank",
            "16",
            "--learning_rate=3e-4",
            "--gradient_checkpointing",
            "false",
            "--frame_buckets",
            "9",
            "17",
            "--cache_dir",
            "none",
            "--validation_prompts",
            "a corridor, then stairs",
            "a door",
        ],
    )
    assert args.rank == 16 and args.learning_rate == 3e-4 and args.gradient_checkpointing is False
    assert args.frame_buckets == (9, 17) and args.cache_dir is None
    assert args.validation_prompts == ("a corridor, then stairs", "a door")


@pytest.mark.parametrize(
    "values, expected",
    [
        (["A dark corridor, the player walks forward."], ("A dark corridor, the player walks forward.",)),
        (
            ['["A dark corridor, the player walks forward.", "A door, then stairs."]'],
            ("A dark corridor, the player walks forward.", "A door, then stairs."),
        ),
        (["A, b", "C"], ("A, b", "C")),
        (["[]"], ()),
        (['["[cinematic] a corridor"]'], ("[cinematic] a corridor",)),
    ],
)
def test_list_settings_never_split_an_item_on_commas(values, expected):
    assert apply_overrides(LoraArgs(), ["--validation_prompts", *values]).validation_prompts == expected


def test_list_settings_take_json_lists_of_their_item_type():
    args = apply_overrides(LoraArgs(), ["--frame_buckets=[17, 33]", "--lora_target_modules", '["to_q"]'])
    assert args.frame_buckets == (17, 33) and args.lora_target_modules == ("to_q",)
    with pytest.raises(ConfigError, match=r"--frame_buckets takes an integer, not '9,17'.*--frame_buckets A B C"):
        apply_overrides(LoraArgs(), ["--frame_buckets", "9,17"])
    with pytest.raises(ConfigError, match=r'holds "17", but each item must be an integer'):
        apply_overrides(LoraArgs(), ["--frame_buckets", '["17"]'])
    with pytest.raises(ConfigError, match="not a JSON list.*also passes an item that starts with"):
        apply_overrides(LoraArgs(), ["--validation_prompts", "[cinematic] a corridor"])


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["--rnak", "4"], "Did you mean --rank"),
        (["--rank", "four"], "--rank takes an integer, not 'four'"),
        (["--gradient_checkpointing", "maybe"], "true or false"),
        (["--rank"], "needs a value"),
        (["--rank", "4", "--max_train_steps"], "--max_train_steps needs a value"),
        (["--rank", "4", "8"], r"--rank takes one value, got 2: \['4', '8'\]; quote a value that has spaces"),
        (["rank", "4"], "expected --name value, got 'rank'"),
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


# ---------------------------------------------------------------- paths


def test_config_paths_are_relative_to_the_stage_folder_and_command_line_paths_to_the_current_directory(
    tmp_path, monkeypatch
):
    stage = tmp_path / "stage1"
    config = stage / "training" / "my_config.py"
    config.parent.mkdir(parents=True)
    config.write_text(
        "from stage1.training.arguments import LoraArgs\nargs = LoraArgs()\n"
        "args.data_root = '../footage'\nargs.index_file = '/abs/index.json'\nargs.cache_dir = '~/cache'\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = parse_command_line(config, LoraArgs, ["--output_dir", "runs/a"])
    assert args.data_root == str(tmp_path / "footage")
    assert args.index_file == "/abs/index.json" and args.cache_dir == str(Path("~/cache").expanduser())
    assert args.output_dir == str(elsewhere / "runs" / "a"), "a command-line path is relative to the current directory"
    # A default counts as the config's: LoraArgs redeclares output_dir without the mark and keeps it.
    assert parse_command_line(config, LoraArgs, []).output_dir == str(stage / LoraArgs().output_dir)
    assert args.resume_from_checkpoint == "latest", "a keyword is not a path"
    assert parse_command_line(config, LoraArgs, ["--resume_from_checkpoint", "none"]).resume_from_checkpoint is None
    resumed = parse_command_line(config, LoraArgs, ["--resume_from_checkpoint", "ckpt/checkpoint-4"])
    assert resumed.resume_from_checkpoint == str(elsewhere / "ckpt" / "checkpoint-4")


def test_a_hub_id_is_not_a_path_unless_such_a_path_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = apply_overrides(LoraArgs(), ["--pretrained_model_name_or_path", "THUDM/CogVideoX-2b", "--data_root", "a/b"])
    assert args.pretrained_model_name_or_path == "THUDM/CogVideoX-2b"
    assert args.data_root == str(tmp_path / "a" / "b"), "only the model setting may be a hub id"
    (tmp_path / "THUDM" / "CogVideoX-2b").mkdir(parents=True)
    args = apply_overrides(LoraArgs(), ["--pretrained_model_name_or_path", "THUDM/CogVideoX-2b"])
    assert args.pretrained_model_name_or_path == str(tmp_path / "THUDM" / "CogVideoX-2b")
    args = apply_overrides(LoraArgs(), ["--pretrained_model_name_or_path", "models/tiny/base"])
    assert args.pretrained_model_name_or_path == str(tmp_path / "models" / "tiny" / "base")


def test_the_stage_configs_paths_resolve_as_the_readme_runs_them():
    """``cd stage1 && bash train_text_to_video_lora.sh --config training/lora_config_tiny.py`` reads the footage
    that ``demo.sh`` records from the repository root into outputs/demo/footage."""
    args = parse_command_line(
        STAGE1 / "training" / "lora_config.py", LoraArgs, ["--config", str(STAGE1 / "training" / "lora_config_tiny.py")]
    )
    assert args.data_root == str(REPO_ROOT / "outputs" / "demo" / "footage")
    assert args.pretrained_model_name_or_path == str(REPO_ROOT / "outputs" / "demo" / "base-tiny")


STAGE_CONFIGS = [  # (stage folder, settings class, config file without "_tiny")
    ("stage1", LoraArgs, "lora_config"),
    ("stage2", SftArgs, "sft_config"),
    ("stage3", SwinArgs, "sft_config"),
    ("stage4", ScmArgs, "scm_config"),
]


@pytest.mark.parametrize("suffix", ["", "_tiny"], ids=["recipe", "tiny"])
def test_each_stage_config_trains_on_the_footage_and_the_model_the_stage_before_wrote(suffix):
    """Read as the launchers read them, the configs of one kind chain: stages 3 and 4 train on the previous stage's
    <output_dir>/model, every stage on the same footage, and each passes its own checks."""
    runs = []
    for folder, args_class, config in STAGE_CONFIGS:
        default = REPO_ROOT / folder / "training" / f"{config}.py"
        args = parse_command_line(default, args_class, ["--config", str(default.with_stem(config + suffix))])
        args.check()
        runs.append(args)
    for previous, following in zip(runs[1:], runs[2:]):
        assert following.pretrained_model_name_or_path == str(Path(previous.output_dir) / "model")
    assert len({(args.data_root, args.index_file) for args in runs}) == 1


# ---------------------------------------------------------------- --help


@pytest.mark.parametrize(
    "module_name, args_class",
    [
        ("stage1.train_text_to_video_lora", LoraArgs),
        ("stage2.train_text_to_video_sft", SftArgs),
        ("stage3.train_text_to_video_sft", SwinArgs),
        ("stage4.train_text_to_video_scm", ScmArgs),
    ],
)
def test_help_lists_every_setting_with_type_default_and_doc(module_name, args_class, capsys):
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module_name).main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for field in dataclasses.fields(args_class):
        assert re.search(rf"^  --{field.name} \S", text, re.MULTILINE), f"--{field.name} is not listed"
    docs = setting_docs(args_class)
    assert all(doc.doc for name, doc in docs.items() if name in {"data_root", "fps", "output_dir"})
    assert (
        "--data_root PATH\n      folder the index's clip paths are relative to [default: 'path/to/data_root';" in text
    )
    assert "--frame_buckets INT [INT ...]" in text and "--resume_from_checkpoint PATH|latest|none" in text
    assert "--pretrained_model_name_or_path PATH_OR_HUB_ID" in text


def test_help_reads_docs_from_comments_above_inline_and_inherited(capsys):
    docs = setting_docs(ScmArgs)
    assert docs["teacher_num_inference_steps"].doc.startswith("N: the teacher's grouped DDIM schedule")
    assert docs["teacher_num_inference_steps"].section == "teacher: the frozen stage-3 model and its ODE solver"
    assert docs["learning_rate"].doc.startswith("A distilled 2B student moves far"), "a subclass's own doc wins"
    assert docs["output_dir"].doc == "checkpoints, logs, validation videos and the final model", "else the parent's"
    assert docs["output_dir"].section == "model and data" and docs["output_dir"].defined_in is TrainingArgs
    text = settings_help(LoraArgs)
    assert (
        "\nLoraArgs (stage1/training/arguments.py):\n  --rank INT\n      LoRA rank of each adapted projection [default: 256]"
        in text
    )


def test_the_first_given_value_counts_empty_and_zero_as_given():
    assert first_given(None, "", "the model's prompt") == ""
    assert first_given(None, 0, 5) == 0
    assert first_given(None, None, "caption") == "caption" and first_given(None, None) is None
