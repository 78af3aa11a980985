"""The clips a run trains on: the index checked, clips bucketed, optionally encoded once into the latent
cache (after checking the disk has room for it), and batched in an order that is a function of (seed, epoch)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from thematrix.config import ConfigError
from thematrix.controls import ControlVocabulary
from thematrix.data.dataset import BucketBatchSampler, VideoDataset, collate_batch
from thematrix.data.index import Sample, load_index
from thematrix.model_dir import TEXT_ENCODER, VAE
from thematrix.training.arguments import TrainingArgs
from thematrix.training.encoded_cache import (
    CACHE_DTYPE,
    EncodedDataset,
    encode_dataset,
    missing_entries,
)
from thematrix.training.run_safety import disk_space_problem, main_process_decides

logger = logging.getLogger(__name__)


def load_samples(args: TrainingArgs, vocabulary: ControlVocabulary | None) -> list[Sample]:
    """The usable entries of ``args.index_file``, their controls checked against ``vocabulary`` (None: the data
    root's, if it has one); each unusable entry is logged with its reason, and none usable is an error."""
    samples, problems = load_index(
        args.index_file, args.data_root, vocabulary, allow_outside_data_root=args.allow_paths_outside_data_root
    )
    for problem in problems:
        logger.warning("skipping sample: %s", problem)
    if not samples:
        raise ConfigError(f"{args.index_file}: no usable sample ({len(problems)} problems listed above)")
    return samples


def clip_dataset(
    samples: list[Sample], args: TrainingArgs, vocabulary: ControlVocabulary | None, temporal_compression: int
) -> VideoDataset:
    """The training clips of ``samples`` at the run's fps, size and frame buckets (no frame is decoded here)."""
    return VideoDataset(
        samples,
        fps=args.fps,
        height=args.height,
        width=args.width,
        frame_buckets=args.frame_buckets,
        temporal_compression=temporal_compression,
        vocabulary=vocabulary,
    )


def weight_files(folder: Path) -> list[tuple[str, int, int, int]]:
    """(name, inode, size, modification time) of each file of a model directory's component ``folder``: its weights'
    identity, without reading them. A later stage's model directory hard-links the frozen VAE and text encoder of
    the one it started from (``save_model_dir``), so both name the same files and the stages share cache entries
    in one ``args.cache_dir``; a rewritten or copied file is another file."""
    return [
        (path.name, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        for path in sorted(Path(folder).iterdir())
        if path.is_file()
        for stat in (path.stat(),)
    ]


def without_path(config: dict[str, Any]) -> dict[str, Any]:
    """A loaded component's config without the folder it was loaded from (``_name_or_path``), which ``weight_files``
    stands for."""
    return {name: value for name, value in config.items() if name != "_name_or_path"}


# The VAE's attributes that say how a tiled encode splits a frame (diffusers' ``enable_tiling``).
VAE_TILING_ATTRIBUTES = (
    "tile_sample_min_height",
    "tile_sample_min_width",
    "tile_overlap_factor_height",
    "tile_overlap_factor_width",
)


def vae_tiling(vae) -> dict[str, Any] | None:
    """How ``vae`` tiles the frames it encodes (``args.enable_tiling``), or None when it encodes whole frames: tiles
    are encoded apart and blended at their seams, so tiled latents differ from whole-frame ones."""
    if not vae.use_tiling:
        return None
    return {name: getattr(vae, name) for name in VAE_TILING_ATTRIBUTES}


def encoder_fingerprint(
    model_dir: Path, args: TrainingArgs, vae, text_encoder, weight_dtype: torch.dtype
) -> dict[str, Any]:
    """What shapes cached latents and prompt embeddings besides the clip itself: the encoders' weight files and
    configs, how the VAE encodes (its tiling) and the preprocessing, not the model directory's path (see
    ``weight_files``). Slicing is left out: the cache encodes one clip at a time, which slicing leaves alone."""
    tiling = vae_tiling(vae)
    return {
        "vae_files": weight_files(Path(model_dir) / VAE),
        "text_encoder_files": weight_files(Path(model_dir) / TEXT_ENCODER),
        "vae": without_path(dict(vae.config)),
        "text_encoder": without_path(text_encoder.config.to_dict()),
        "max_text_seq_length": args.max_text_seq_length,
        "height": args.height,
        "width": args.width,
        "fps": args.fps,
        "frame_buckets": list(args.frame_buckets),
        "dtype": str(weight_dtype),
        # Only when tiling is on, so the entries of runs without tiling keep their keys.
        **({"vae_tiling": tiling} if tiling is not None else {}),
    }


def cache_entry_bytes(num_frames: int, args: TrainingArgs, vae, text_encoder) -> int:
    """Size of one clip's cache entry: the VAE's latent mean and log-variance, and the caption's embeddings."""
    spatial = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_frames = (num_frames - 1) // vae.config.temporal_compression_ratio + 1
    latent = 2 * vae.config.latent_channels * latent_frames * (args.height // spatial) * (args.width // spatial)
    embeds = args.max_text_seq_length * text_encoder.config.d_model
    return (latent + embeds) * CACHE_DTYPE.itemsize


def cached_clips(
    dataset: VideoDataset,
    cache_dir: Path,
    encode_videos: Callable[[torch.Tensor], torch.Tensor],
    encode_prompts: Callable[[list[str]], torch.Tensor],
    fingerprint: dict[str, Any],
    entry_bytes: Callable[[int], int],
    accelerator: Accelerator,
    num_workers: int = 0,
) -> EncodedDataset:
    """``dataset`` as latents and prompt embeddings, encoding (main process first) the clips not yet cached.

    ``entry_bytes(num_frames)`` estimates one entry, for the free-space check made before encoding;
    ``num_workers`` processes decode clips ahead of the encoders.
    """

    def space_problem():
        missing = missing_entries(dataset, cache_dir, fingerprint)
        needed = sum(entry_bytes(dataset.buckets[index]) for index, _, _ in missing)
        fix = "free space there, set args.cache_dir to a larger disk, or args.cache_latents = False"
        return disk_space_problem(cache_dir, [(f"{len(missing)} latent cache entries", needed)], fix)

    problem = main_process_decides(accelerator, space_problem)
    if problem:
        raise ConfigError(problem)
    with accelerator.main_process_first():
        encode_dataset(dataset, cache_dir, encode_videos, encode_prompts, fingerprint, num_workers)
    return EncodedDataset(dataset, cache_dir, fingerprint)


def training_batches(
    dataset, args: TrainingArgs, num_processes: int
) -> tuple[BucketBatchSampler, torch.utils.data.DataLoader]:
    """(sampler, loader) of batches of ``args.train_batch_size`` clips of one bucket; each of the ``num_processes``
    processes takes every num_processes-th batch, so an epoch needs a batch for each."""
    sampler = BucketBatchSampler(
        dataset, batch_size=args.train_batch_size, seed=args.seed, shuffle=args.shuffle, drop_last=True
    )
    if len(sampler) < num_processes:
        raise ConfigError(
            f"{args.index_file}: {len(dataset)} clips make {len(sampler)} batches of {args.train_batch_size} clips "
            f"of one bucket, and each of the {num_processes} processes needs one; add clips, or lower "
            "args.train_batch_size or the number of processes (NUM_PROCESSES)"
        )
    # Workers persist across epochs: a small dataset's epoch lasts a few steps, and starting the workers anew at each
    # one cost the mini model's pretraining about a fifth of its time (learning/README.md). The batch sampler runs in
    # the main process, so each epoch's order still follows set_epoch.
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_batch,
        num_workers=args.dataloader_num_workers,
        persistent_workers=args.dataloader_num_workers > 0,
    )
    return sampler, loader
