"""Cache of VAE latent distributions and prompt embeddings, keyed by everything that shapes them.

Each entry's file name is a hash of the clip (path, size, modification time, caption, first
frame, bucket) and of the encoders and preprocessing (model, VAE and text-encoder configs,
the VAE's tiling, resolution, fps, text length, dtype). Changing any of them changes the key, so a stale entry is
never found, let alone reused; the key's fields are stored in the entry and checked on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

KEY_METADATA = "cache_key"
CACHE_DTYPE = torch.float32  # what entries hold, whatever dtype the encoders ran in


def entry_key(dataset, index: int, fingerprint: dict[str, Any]) -> tuple[str, str]:
    """(hash, canonical JSON of the fields it hashes) of one clip under one encoder fingerprint."""
    info = dataset.describe(index)
    stat = os.stat(info["path"])
    fields = {
        "encoders": fingerprint,
        "path": str(Path(info["path"]).resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "caption": info["caption"],
        "start_frame": info["start_frame"],
        "bucket": info["bucket"],
    }
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest(), text


def entry_path(dataset, index: int, cache_dir: Path, fingerprint: dict[str, Any]) -> tuple[Path, str]:
    """(file, canonical JSON of its key) of one clip's cache entry."""
    key, text = entry_key(dataset, index, fingerprint)
    return Path(cache_dir) / f"{key}.safetensors", text


def missing_entries(dataset, cache_dir: Path, fingerprint: dict[str, Any]) -> list[tuple[int, Path, str]]:
    """(index, entry file, canonical JSON of its key) of each clip that has no cache entry yet."""
    entries = ((index, *entry_path(dataset, index, cache_dir, fingerprint)) for index in range(len(dataset)))
    return [(index, path, text) for index, path, text in entries if not path.is_file()]


def encode_dataset(
    dataset,
    cache_dir: Path,
    encode_videos: Callable[[torch.Tensor], torch.Tensor],
    encode_prompts: Callable[[list[str]], torch.Tensor],
    fingerprint: dict[str, Any],
    num_workers: int = 0,
) -> None:
    """Encode every clip whose entry is missing; entries are written atomically. ``num_workers`` processes decode
    the clips ahead of the encoders: decoding, not encoding, takes most of a small model's caching time."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    missing = missing_entries(dataset, cache_dir, fingerprint)
    clips = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, [index for index, _, _ in missing]), batch_size=None, num_workers=num_workers
    )
    for (_, path, text), sample in zip(missing, tqdm(clips, desc="caching latents")):
        tensors = {
            "latent_parameters": encode_videos(sample["video"][None])[0].to(CACHE_DTYPE).cpu().contiguous(),
            "prompt_embeds": encode_prompts([sample["caption"]])[0].to(CACHE_DTYPE).cpu().contiguous(),
        }
        partial = path.with_suffix(".partial")
        save_file(tensors, str(partial), metadata={KEY_METADATA: text})
        os.replace(partial, path)
    logger.info("latent cache %s: %d reused, %d encoded", cache_dir, len(dataset) - len(missing), len(missing))


class EncodedDataset(torch.utils.data.Dataset):
    """The clips of ``dataset`` as cached latent parameters and prompt embeddings (no video decoding)."""

    def __init__(self, dataset, cache_dir: Path, fingerprint: dict[str, Any]):
        self.dataset = dataset
        self.cache_dir = Path(cache_dir)
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        # Bucket samplers read the wrapped dataset's bucket assignment.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, text = entry_path(self.dataset, index, self.cache_dir, self.fingerprint)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no cache entry for {self.dataset.describe(index)['path']}; the clip changed after caching"
            )
        item = self.dataset.describe(index)
        with safe_open(str(path), framework="pt") as handle:
            if handle.metadata().get(KEY_METADATA) != text:
                raise ValueError(f"{path}: cache entry was written for other inputs; delete {self.cache_dir} and rerun")
            for name in handle.keys():
                item[name] = handle.get_tensor(name)
        return item
