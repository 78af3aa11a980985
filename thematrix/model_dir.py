"""Checks on model directories, so a wrong path fails at start with a message saying what to pass."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from thematrix.hub import HUB_ID_EXAMPLE, resolve_model_path

PIPELINE_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


class ModelDirError(ValueError):
    """A model directory that is missing, incomplete or of the wrong kind."""


def check_model_dir(path: str | Path, setting: str = "args.pretrained_model_name_or_path") -> Path:
    """Return the local directory of ``path`` (a hub id's cached snapshot, see thematrix.hub) if it is a complete
    diffusers CogVideoX directory; otherwise say what is wrong."""
    path = resolve_model_path(path, setting)
    if not path.is_dir():
        raise ModelDirError(
            f"{setting} = {str(path)!r} is not a directory. Pass a local diffusers CogVideoX model directory "
            "(e.g. one written by `python -m thematrix.base_model` or by the previous stage), or a Hugging Face "
            f"model id such as {HUB_ID_EXAMPLE!r}."
        )
    if (path / LORA_WEIGHT_NAME).is_file() and not (path / "model_index.json").is_file():
        raise ModelDirError(
            f"{setting} = {str(path)!r} holds LoRA weights only. Fuse them first: "
            "`python stage1/fuse_lora_weights.py --base_model BASE --lora_dir LORA --output_dir FUSED`, "
            "then pass FUSED."
        )
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelDirError(f"{setting} = {str(path)!r} has no model_index.json; it is not a diffusers model directory.")
    index = json.loads(index_file.read_text())
    missing = [name for name in PIPELINE_COMPONENTS if name not in index or not (path / name).is_dir()]
    if missing:
        raise ModelDirError(f"{index_file}: the model directory lacks {missing}; a CogVideoX directory needs {list(PIPELINE_COMPONENTS)}.")
    return path


def transformer_class_name(path: str | Path) -> str:
    """The ``_class_name`` recorded in a model directory's transformer config."""
    config = json.loads((Path(path) / "transformer" / "config.json").read_text())
    return config["_class_name"]


def nearest_library_class(cls: type, library: str = "diffusers") -> type:
    """The first class in ``cls``'s ancestry that ``library`` defines (``cls`` itself if it does)."""
    for ancestor in cls.__mro__:
        if ancestor.__module__.split(".")[0] == library:
            return ancestor
    raise TypeError(f"{cls.__name__} derives from no {library} class")


def save_model_dir(pipeline, output_dir: str | Path) -> Path:
    """Save a pipeline as a directory stock diffusers loads, atomically (written aside, then renamed).

    Project subclasses of the pipeline and scheduler add behaviour, not weights or config, so
    they are recorded as their diffusers ancestors; the transformer keeps its own class.
    """
    output_dir = Path(output_dir)
    scheduler = nearest_library_class(type(pipeline.scheduler)).from_config(pipeline.scheduler.config)
    stock = nearest_library_class(type(pipeline))(
        tokenizer=pipeline.tokenizer, text_encoder=pipeline.text_encoder, vae=pipeline.vae,
        transformer=pipeline.transformer, scheduler=scheduler,
    )
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    stock.save_pretrained(str(partial), safe_serialization=True)
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(partial, output_dir)
    return output_dir


def load_components(model_dir: str | Path, dtype, scheduler_class, transformer_class=None) -> dict:
    """Tokenizer, text encoder, VAE, scheduler (and transformer) of a model directory, loaded part by part.

    diffusers' pipeline loader resolves classes only from diffusers and transformers by name, so the
    project's transformer classes are loaded here by the stage that knows them.
    """
    from diffusers import AutoencoderKLCogVideoX
    from transformers import AutoTokenizer, T5EncoderModel

    components = {
        "tokenizer": AutoTokenizer.from_pretrained(model_dir, subfolder="tokenizer"),
        "text_encoder": T5EncoderModel.from_pretrained(model_dir, subfolder="text_encoder", dtype=dtype),
        "vae": AutoencoderKLCogVideoX.from_pretrained(model_dir, subfolder="vae", dtype=dtype),
        "scheduler": scheduler_class.from_pretrained(model_dir, subfolder="scheduler"),
    }
    if transformer_class is not None:
        components["transformer"] = transformer_class.from_pretrained(model_dir, subfolder="transformer", dtype=dtype)
    return components
