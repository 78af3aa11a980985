"""Model directories: checks, so a wrong path fails at start with a message saying what to pass; writing one;
and what a stage records in it about how its model was trained (``GenerationDefaults``)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thematrix.hub import HUB_ID_EXAMPLE, resolve_model_path

TRANSFORMER = "transformer"
VAE = "vae"
TEXT_ENCODER = "text_encoder"
SCHEDULER = "scheduler"
PIPELINE_COMPONENTS = (TRANSFORMER, VAE, TEXT_ENCODER, "tokenizer", SCHEDULER)
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
MODEL_INDEX = "model_index.json"
# Beside model_index.json (and beside stage 1's LoRA weights): how the model was trained, see GenerationDefaults.
GENERATION_DEFAULTS_FILE = "generation_defaults.json"
# CogVideoX's own frame rate: what a model directory that records none (a base model) generates at.
COGVIDEOX_FPS = 8
# Text guidance scales: CogVideoX's default, for a model trained on captions (and their dropout); and a scale of 1,
# one conditional forward without classifier-free guidance, for a model whose run dropped every caption.
DEFAULT_TEXT_GUIDANCE = 6.0
NO_TEXT_GUIDANCE = 1.0
# The caption a dropped one is replaced by, and the prompt a run that dropped every caption records.
EMPTY_CAPTION = ""
# The samplers a model's Swin-DPM window is trained for (GenerationDefaults.sampler), and the stage that trains each:
# stage 3's many-step shifted-window denoising, stage 4's one-step-per-group consistency student.
SWIN_DPM_SAMPLER, SCM_SAMPLER = "swin-dpm", "scm"
SAMPLER_STAGES = {SWIN_DPM_SAMPLER: 3, SCM_SAMPLER: 4}
# Libraries whose classes model_index.json names by library alone (diffusers' LOADABLE_CLASSES).
LOADER_LIBRARIES = ("diffusers", "transformers")


class ModelDirError(ValueError):
    """A model directory that is missing, incomplete or of the wrong kind."""


@dataclass(frozen=True)
class GenerationDefaults:
    """How a model was trained, recorded in its directory so that inference, play and the next stage need not be
    told again: a setting left unset takes these values, and one that contradicts them is an error.

    ``fps``, ``height``, ``width``: the frame rate and size of its training clips; ``num_frames``: its longest
    training clip (the window's clip in stages 3-4); ``prompt``: a prompt of its footage (the run's first
    validation prompt, by default a caption of the footage, or the empty caption where its run dropped every
    caption); ``num_groups``, ``group_size``: the Swin-DPM window of G groups of W latent frames (stages 3-4; None
    before); ``sampler``: the sampler that window was trained for (``SWIN_DPM_SAMPLER`` in stage 3, ``SCM_SAMPLER``
    in stage 4; None before, and in records written before the field), so that a stage-2 model is refused where a
    stage-3 one is needed (``check_sampler``); ``guidance_scale``: the text guidance the model samples at by
    default: ``NO_TEXT_GUIDANCE`` where its run dropped every caption (caption_p_zero = 1: the stage never trained a
    caption's effect), None otherwise (the sampler's own default), and in records written before the field. For a
    model that records nothing, ``fps`` and ``prompt`` are None too (see ``generation_defaults``). The model's
    control vocabulary is part of its transformer's config, not of this file.
    """

    fps: int | None
    height: int
    width: int
    num_frames: int
    prompt: str | None
    num_groups: int | None = None
    group_size: int | None = None
    sampler: str | None = None
    guidance_scale: float | None = None

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / GENERATION_DEFAULTS_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> GenerationDefaults | None:
        """The record in ``directory``, or None for a directory without one (a base model, an older stage's)."""
        path = Path(directory) / GENERATION_DEFAULTS_FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
            fields = [field.name for field in dataclasses.fields(cls)]
            raise ModelDirError(
                f"{path}: not a record of how the model was trained ({error}). Fix: write a JSON object with the "
                f"fields {fields}, or delete the file (settings then need to be given)"
            ) from None


def generation_defaults(model_dir: str | Path) -> GenerationDefaults:
    """What ``model_dir`` records of its training; for a model that records nothing (a base model), its configs'
    native size and clip length, with no frame rate (generate at ``COGVIDEOX_FPS``), prompt, window or guidance."""
    recorded = GenerationDefaults.load(model_dir)
    if recorded is not None:
        return recorded
    vae = json.loads((Path(model_dir) / VAE / "config.json").read_text())
    return GenerationDefaults(
        fps=None,
        height=vae["sample_height"],
        width=vae["sample_width"],
        num_frames=transformer_config(model_dir)["sample_frames"],
        prompt=None,
    )


def check_sampler(model_dir: str | Path, sampler: str, setting: str) -> None:
    """Refuse a model directory whose record says its window was not trained for ``sampler``: a stage-2 model
    (never trained on the shifted window) where a stage-3 model is needed, or one stage's model where the other's
    is. A directory that records nothing is taken as it is: only its transformer's class can be checked."""
    record = GenerationDefaults.load(model_dir)
    if record is None or record.sampler == sampler:
        return
    needed = SAMPLER_STAGES[sampler]
    if record.sampler is None:
        found = (
            "records no Swin-DPM sampler: its window was never trained (a stage-2 model, or a stage-3/4 model "
            f"written before {GENERATION_DEFAULTS_FILE} recorded the sampler)"
        )
    else:
        found = f"was trained for the {record.sampler!r} sampler (stage {SAMPLER_STAGES.get(record.sampler, '?')})"
    raise ModelDirError(
        f"{setting} = {str(model_dir)!r} {found}, but this needs a model trained for the {sampler!r} sampler: pass "
        f"stage {needed}'s <output_dir>/model (a stage-{needed} model written before the record: add "
        f'"sampler": "{sampler}" to its {GENERATION_DEFAULTS_FILE})'
    )


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
    if (path / LORA_WEIGHT_NAME).is_file() and not (path / MODEL_INDEX).is_file():
        raise ModelDirError(
            f"{setting} = {str(path)!r} holds LoRA weights only. Fuse them first: "
            "`python stage1/fuse_lora_weights.py --base_model BASE --lora_dir LORA --output_dir FUSED`, "
            "then pass FUSED."
        )
    index_file = path / MODEL_INDEX
    if not index_file.is_file():
        raise ModelDirError(f"{setting} = {str(path)!r} has no {MODEL_INDEX}; it is not a diffusers model directory.")
    index = json.loads(index_file.read_text())
    missing = [name for name in PIPELINE_COMPONENTS if name not in index or not (path / name).is_dir()]
    if missing:
        raise ModelDirError(
            f"{index_file}: the model directory lacks {missing}; a CogVideoX directory needs {list(PIPELINE_COMPONENTS)}."
        )
    return path


def transformer_config(path: str | Path) -> dict[str, Any]:
    """A model directory's transformer config, read without loading a weight."""
    return json.loads((Path(path) / TRANSFORMER / "config.json").read_text())


def transformer_class_name(path: str | Path) -> str:
    """The ``_class_name`` recorded in a model directory's transformer config."""
    return transformer_config(path)["_class_name"]


def vae_architecture(path: str | Path):
    """A model directory's VAE without its weights (on the meta device): its compression factors and decoder
    batches, for checks made before anything loads."""
    from diffusers import AutoencoderKLCogVideoX

    with torch.device("meta"):
        return AutoencoderKLCogVideoX.from_config(AutoencoderKLCogVideoX.load_config(path, subfolder=VAE))


def library_and_class(cls: type) -> tuple[str, str]:
    """A component's entry in model_index.json, as diffusers' ``save_pretrained`` records it.

    Classes of diffusers and transformers are recorded by library name; any other class by its module
    path, which ``DiffusionPipeline.from_pretrained`` resolves once that module has been imported (it
    never imports a module because a model directory names it).
    """
    library = cls.__module__.split(".")[0]
    return (library if library in LOADER_LIBRARIES else cls.__module__), cls.__name__


def _link_or_copy(source: str, destination: str) -> str:
    """Hard-link ``source`` to ``destination`` (no copy, same bytes); copy where the filesystem cannot link."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
    return destination


def save_model_dir(
    transformer, source_dir: str | Path, output_dir: str | Path, defaults: GenerationDefaults | None = None
) -> Path:
    """Write ``source_dir`` with its transformer replaced by ``transformer``, atomically (aside, then renamed).

    Only the transformer (in its own dtype) and ``defaults`` (when given) are written. Every other entry of
    ``source_dir`` (tokenizer, text encoder, VAE, scheduler, licence files) is hard-linked, or copied where
    links are impossible, byte for byte: their classes, dtypes and configs stay as they were, and a T5-XXL is
    never re-saved. A hard link is the same file in both directories, so a model directory is never rewritten
    in place: this function writes a new one aside and renames it. model_index.json is the source's with the
    transformer entry updated.
    """
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    index = json.loads((source_dir / MODEL_INDEX).read_text())
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    written = {TRANSFORMER, MODEL_INDEX} | ({GENERATION_DEFAULTS_FILE} if defaults is not None else set())
    for entry in source_dir.iterdir():
        if entry.name in written:
            continue
        if entry.is_dir():
            shutil.copytree(entry, partial / entry.name, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(partial / entry.name))
    transformer.save_pretrained(str(partial / TRANSFORMER), safe_serialization=True)
    index[TRANSFORMER] = list(library_and_class(type(transformer)))
    (partial / MODEL_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    if defaults is not None:
        defaults.save(partial)
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(partial, output_dir)
    return output_dir


def load_components(model_dir: str | Path, dtype, scheduler_class=None, transformer_class=None) -> dict:
    """Tokenizer, text encoder and VAE of a model directory, and its scheduler and transformer as the given classes
    (each left out when its class is None), loaded part by part.

    diffusers' pipeline loader resolves classes only from diffusers and transformers by name, so the
    project's transformer classes are loaded here by the stage that knows them.
    """
    from diffusers import AutoencoderKLCogVideoX
    from transformers import AutoTokenizer, T5EncoderModel

    components = {
        "tokenizer": AutoTokenizer.from_pretrained(model_dir, subfolder="tokenizer"),
        "text_encoder": T5EncoderModel.from_pretrained(model_dir, subfolder=TEXT_ENCODER, dtype=dtype),
        "vae": AutoencoderKLCogVideoX.from_pretrained(model_dir, subfolder=VAE, dtype=dtype),
    }
    if scheduler_class is not None:
        components["scheduler"] = scheduler_class.from_pretrained(model_dir, subfolder=SCHEDULER)
    if transformer_class is not None:
        components["transformer"] = transformer_class.from_pretrained(model_dir, subfolder=TRANSFORMER, dtype=dtype)
    return components
