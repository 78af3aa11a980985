"""Model identifiers: a local diffusers directory, or a Hugging Face Hub id fetched once into the hub cache.

``pretrained_model_name_or_path`` is "the path of the original CogVideoX-2B model, or huggingface
identifier". A value naming something that exists on disk is that path. Otherwise a value of the form
``namespace/name`` (``THUDM/CogVideoX-2b``) is a hub id: huggingface_hub downloads the model into its
cache on first use (``HF_HOME``, ``HF_HUB_CACHE``) and finds it there afterwards; with
``HF_HUB_OFFLINE=1`` it looks only in the cache. The caller checks the resulting directory as it
checks any local one.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

HUB_ID_EXAMPLE = "THUDM/CogVideoX-2b"
# A hub id here is "namespace/name": a bare "name" could as well be a directory that is missing.
HUB_ID_SEPARATOR = "/"


class ModelIdError(ValueError):
    """A model setting that is neither a local path nor a hub id that could be fetched."""


def looks_like_hub_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hugging Face model id ``namespace/name``."""
    if text.count(HUB_ID_SEPARATOR) != 1:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def resolve_model_path(name_or_path: str | os.PathLike, setting: str) -> Path:
    """The local directory of a model setting: the path itself, or the hub cache's snapshot of a hub id.

    A value that exists on disk, or that cannot be a hub id, is returned as a path for the caller to
    check. A hub id is downloaded once (or, offline, found in the cache); failing that, the error says
    what to pass.
    """
    path = Path(name_or_path).expanduser()
    if path.exists() or not looks_like_hub_id(str(name_or_path)):
        return path
    try:
        return Path(snapshot_download(str(name_or_path)))
    except (OSError, ValueError) as error:  # huggingface_hub's network, cache and validation errors
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        where = (
            f"HF_HUB_OFFLINE is set, so only the cache {constants.HF_HUB_CACHE} was searched"
            if constants.HF_HUB_OFFLINE
            else "it could not be fetched from the Hugging Face Hub"
        )
        raise ModelIdError(
            f"{setting} = {str(name_or_path)!r} is not a local directory (looked for {os.path.abspath(path)}), and as a "
            f"Hugging Face model id {where}: {reason}. Fix: pass a local diffusers model directory, or a hub id such "
            f"as {HUB_ID_EXAMPLE!r} with network access once (it is kept in the cache for offline use)."
        ) from None
