"""Training clips: resampled to a frame rate, resized and cropped, cut to a frame bucket.

Each clip is assigned the largest frame bucket (``temporal_compression * k + 1`` frames) that
its usable frames fill at the training fps; a batch holds clips of one bucket only
(``BucketBatchSampler``). With a vocabulary, a clip gets one control token per latent frame: the
tokens of the sampled frames ``[::temporal_compression]``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import decord
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from thematrix.controls import ControlError, ControlVocabulary, latent_frame_controls
from thematrix.data.decoder import VideoDecodeError, decode_quietly
from thematrix.data.index import Problem, Sample

logger = logging.getLogger(__name__)

# Frame rates this close (relatively) are one rate: NTSC's 29.97 (30000/1001) fps is 30, its 23.976 is 24. A source
# at the training rate within it gives its frames one to one, as players show them; picked by time, 29.97 fps read at
# 30 would repeat a frame every 1000 frames (33 s), and no clip longer than that could train.
FPS_TOLERANCE = 2e-3
UINT8_HALF_RANGE = 255 / 2
# How many skipped clips to name in an error message before summarising.
MAX_SKIPPED_LISTED = 5


class DatasetError(ValueError):
    """The dataset cannot be built as configured; the message names the files and the fix."""


@dataclass
class _Clip:
    sample: Sample
    bucket: int
    # How many frames at the training fps the usable part of the file holds.
    available: int


def same_rate(source_fps: float, target_fps: float) -> bool:
    """Whether two frame rates are one within ``FPS_TOLERANCE`` (29.97 and 30)."""
    return abs(source_fps / target_fps - 1) <= FPS_TOLERANCE


def frame_step(source_fps: float, target_fps: float) -> float:
    """Source frames per frame at ``target_fps``: exactly 1 for the same rate (``same_rate``)."""
    return 1.0 if same_rate(source_fps, target_fps) else source_fps / target_fps


def time_indices(positions: np.ndarray, source_fps: float, target_fps: float) -> np.ndarray:
    """Source frames nearest to the times ``position / target_fps`` (position 0 = source frame 0); a source at
    the same rate gives its frames one to one."""
    return np.floor(np.asarray(positions) * frame_step(source_fps, target_fps) + 0.5).astype(np.int64)


def _available_frames(usable: int, source_fps: float, target_fps: float) -> int:
    upper_bound = int(usable / frame_step(source_fps, target_fps)) + 2
    return int(np.sum(time_indices(np.arange(upper_bound), source_fps, target_fps) < usable))


def footage_fps(samples: Sequence[Sample]) -> int:
    """The frame rate footage trains at when none is set: the highest whole rate its slowest clip gives without
    repeating a frame, a rate within ``FPS_TOLERANCE`` counting as the same (29.97 fps footage trains at 30)."""
    return math.floor(min(sample.fps for sample in samples) / (1 - FPS_TOLERANCE))


def resize_center_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale ``[F, C, H, W]`` so it covers (height, width) keeping its aspect, then crop the center."""
    source_h, source_w = video.shape[-2:]
    scale = max(height / source_h, width / source_w)
    resized_h = max(height, round(source_h * scale))
    resized_w = max(width, round(source_w * scale))
    if (resized_h, resized_w) != (source_h, source_w):
        video = F.interpolate(video, size=(resized_h, resized_w), mode="bilinear", align_corners=False, antialias=True)
    top = (resized_h - height) // 2
    left = (resized_w - width) // 2
    return video[..., top : top + height, left : left + width]


class VideoDataset(Dataset):
    """Clips of checked samples (from ``load_index``) as model inputs.

    Args:
        samples: the usable samples that ``load_index`` returned.
        fps: training frame rate; frames are picked by time from the file's frame rate, which
            must not be lower (frames are never repeated to fake a higher rate), or one to one from a file at
            the same rate within ``FPS_TOLERANCE``.
        height, width: output size; frames are resized keeping their aspect, then center-cropped.
        frame_buckets: allowed clip lengths in frames, each ``temporal_compression * k + 1``.
        temporal_compression: the VAE's compression of time (``vae.config.temporal_compression_ratio``).
        vocabulary: the control tokens that the samples use; None for a stage without controls (items
            then carry no controls, and samples need none).
        random_start: start each clip at a random usable frame (drawn from torch's global RNG, which
            DataLoader seeds per worker) instead of the first usable frame.

    ``dataset[i]`` is a dict: ``video`` float32 ``[F, C, H, W]`` in ``[-1, 1]``; ``caption``;
    ``path``; ``bucket`` (= F); ``start_frame``; with a vocabulary also ``controls``, a LongTensor
    ``[(F - 1) / temporal_compression + 1]`` of token ids, and ``control_tokens``, the same as strings.
    ``dataset.skipped`` lists the samples too short for the smallest bucket.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        fps: float,
        height: int,
        width: int,
        frame_buckets: Sequence[int],
        temporal_compression: int,
        vocabulary: ControlVocabulary | None = None,
        random_start: bool = False,
    ):
        not_positive = {name: value for name, value in dict(fps=fps, height=height, width=width).items() if value <= 0}
        if not_positive:
            listed = ", ".join(f"args.{name} = {value}" for name, value in not_positive.items())
            raise DatasetError(f"{listed}: training clips need a positive frame rate and size. Fix: set them above 0")
        if temporal_compression <= 0:
            raise DatasetError(
                f"the VAE's temporal_compression_ratio is {temporal_compression}, not a whole number of frames per "
                "latent frame. Fix: use a model directory whose vae/config.json gives a positive one"
            )
        bad_buckets = [bucket for bucket in frame_buckets if bucket < 1 or (bucket - 1) % temporal_compression]
        if not frame_buckets or bad_buckets:
            raise DatasetError(
                f"args.frame_buckets = {list(frame_buckets)}: every bucket must be {temporal_compression}k+1 frames "
                f"(the VAE compresses time by {temporal_compression}). Fix: use lengths such as "
                f"{[temporal_compression * k + 1 for k in (4, 8, 16)]}"
            )
        if not samples:
            raise DatasetError(
                "the index has no usable clip. Fix: list its problems with `python -m thematrix.data.validate "
                "--data_root DATA_ROOT --index_file INDEX_FILE` and mend them"
            )
        self.fps, self.height, self.width = fps, height, width
        self.frame_buckets = sorted(set(frame_buckets))
        self.temporal_compression = temporal_compression
        self.vocabulary = vocabulary
        self.random_start = random_start

        too_slow = [sample for sample in samples if sample.fps < fps and not same_rate(sample.fps, fps)]
        if too_slow:
            listed = "; ".join(f"{sample.entry} is {sample.fps:g} fps" for sample in too_slow[:MAX_SKIPPED_LISTED])
            raise DatasetError(
                f"{len(too_slow)} clips have a lower frame rate than the training fps (args.fps = {fps:g}): "
                f"{listed}. Fix: lower args.fps to at most {footage_fps(too_slow)} (or leave it unset), or re-record "
                "these clips faster"
            )
        self._clips: list[_Clip] = []
        self.skipped: list[Problem] = []
        for sample in samples:
            self._check_controls(sample)
            available = _available_frames(sample.num_frames - sample.valid_frame_idx, sample.fps, fps)
            fitting = [bucket for bucket in self.frame_buckets if bucket <= available]
            if fitting:
                self._clips.append(_Clip(sample, fitting[-1], available))
            else:
                self.skipped.append(
                    Problem(
                        sample.position,
                        sample.relative_path,
                        "valid_frame_idx",
                        f"leaves {available} frames at args.fps = {fps:g} from frame {sample.valid_frame_idx} (of "
                        f"{sample.num_frames} at {sample.fps:g} fps in the file), but the shortest of "
                        f"args.frame_buckets is {self.frame_buckets[0]}",
                        "record a longer clip, lower valid_frame_idx, or add a shorter bucket to args.frame_buckets",
                    )
                )
        if not self._clips:
            listed = "\n  ".join(str(problem) for problem in self.skipped[:MAX_SKIPPED_LISTED])
            raise DatasetError(
                f"none of the {len(samples)} clips fills the shortest of args.frame_buckets ({self.frame_buckets[0]} "
                f"frames at args.fps = {fps:g}):\n  {listed}"
            )
        if self.skipped:
            logger.warning(
                "%d of %d clips are too short for the smallest frame bucket and are skipped (see dataset.skipped): %s",
                len(self.skipped),
                len(samples),
                "; ".join(str(problem) for problem in self.skipped[:MAX_SKIPPED_LISTED]),
            )

    def _check_controls(self, sample: Sample) -> None:
        if self.vocabulary is None:
            return
        if sample.frame_controls is None:
            raise DatasetError(
                f"{sample.entry}: has no control_signal_seq, but this model is steered by controls. Fix: add one "
                "control token per video frame to the entry"
            )
        if len(sample.frame_controls) != sample.num_frames:
            raise DatasetError(
                f"{sample.entry}: control_signal_seq has {len(sample.frame_controls)} tokens for {sample.num_frames} "
                "frames. Fix: write one token per video frame (python -m thematrix.data.validate checks the index)"
            )
        try:
            self.vocabulary.encode(sample.frame_controls)
        except ControlError as error:
            raise DatasetError(f"{sample.entry}: {error}") from None

    @property
    def buckets(self) -> list[int]:
        """The frame bucket of every item, in dataset order (what ``BucketBatchSampler`` groups by)."""
        return [clip.bucket for clip in self._clips]

    def __len__(self) -> int:
        return len(self._clips)

    def frame_indices(self, index: int, offset: int = 0) -> list[int]:
        """Source frame numbers of item ``index``, starting ``offset`` training frames after the first usable one."""
        clip = self._clips[index]
        if not 0 <= offset <= clip.available - clip.bucket:
            raise IndexError(f"offset {offset} out of 0..{clip.available - clip.bucket} for {clip.sample.path}")
        positions = np.arange(offset, offset + clip.bucket)
        return (clip.sample.valid_frame_idx + time_indices(positions, clip.sample.fps, self.fps)).tolist()

    def describe(self, index: int, offset: int = 0) -> dict:
        """Item ``index`` without its pixels: what caches and samplers need, read without decoding."""
        clip = self._clips[index]
        indices = self.frame_indices(index, offset)
        item = dict(caption=clip.sample.caption, path=clip.sample.path, bucket=clip.bucket, start_frame=indices[0])
        if self.vocabulary is not None:
            tokens = latent_frame_controls([clip.sample.frame_controls[k] for k in indices], self.temporal_compression)
            item.update(controls=torch.tensor(self.vocabulary.encode(tokens), dtype=torch.long), control_tokens=tokens)
        return item

    def __getitem__(self, index: int) -> dict:
        clip = self._clips[index]
        offset = 0
        if self.random_start:
            offset = int(torch.randint(clip.available - clip.bucket + 1, ()).item())
        indices = self.frame_indices(index, offset)
        try:
            frames = torch.from_numpy(
                decode_quietly(  # [F, H, W, C] uint8
                    lambda: decord.VideoReader(clip.sample.path, ctx=decord.cpu(0)).get_batch(indices).asnumpy()
                )
            )
        except VideoDecodeError as error:
            raise DatasetError(
                f"{clip.sample.entry}: cannot be decoded ({error}); the file changed after it "
                "was checked. Fix: re-encode or remove it, then check the index with python -m thematrix.data.validate"
            ) from None
        video = resize_center_crop(frames.permute(0, 3, 1, 2).float(), self.height, self.width)
        video = (video / UINT8_HALF_RANGE - 1.0).clamp(-1.0, 1.0)
        return dict(self.describe(index, offset), video=video.contiguous())


def collate_batch(items: list[dict]) -> dict:
    """Stack items of one bucket: tensors are stacked, everything else becomes a per-item list.

    (torch's default collate would transpose ``control_tokens`` into per-position tuples.)
    """
    buckets = {item["bucket"] for item in items}
    if len(buckets) != 1:
        raise DatasetError(f"a batch mixes frame buckets {sorted(buckets)}; batch with BucketBatchSampler")
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    batch["bucket"] = buckets.pop()
    return batch


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed from (seed, epoch): nearby pairs give unrelated orders."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices that share one frame bucket, in an order of epoch ``e`` that depends only on (seed, e).

    Call ``set_epoch(e)`` before each epoch (as with ``DistributedSampler``); resuming at epoch ``e``
    then replays exactly the same batches. ``dataset`` needs only a ``buckets`` list.

    The epoch's order is one permutation of all items (the identity unshuffled), whatever the batch size: each
    bucket's items are batched in that order, and batches come in the order of their first item. accelerate deals
    batch k to process k mod the number of processes, so the samples of all processes together follow that order
    whatever their number and batch size, and a run resumed on other samples per micro-batch draws, from its
    ``DataPosition`` on, what the uninterrupted run would have. Exactly so for one bucket, or for batches of one.
    Not guaranteed: with several buckets and batches of more than one, how the buckets interleave depends on the
    batch size (each bucket's own order does not); and which items an epoch leaves out (a bucket's last items short
    of a batch, the last batches short of one for every process) depends on the batch size and number of processes.
    """

    def __init__(self, dataset, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        super().__init__()
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.epoch = 0
        self._buckets = list(dataset.buckets)
        self._bucket_sizes = Counter(self._buckets)
        if len(self) == 0:
            sizes = dict(sorted(self._bucket_sizes.items()))
            raise DatasetError(
                f"no frame bucket holds a batch of args.train_batch_size = {batch_size} clips (clips per bucket: "
                f"{sizes}). Fix: lower args.train_batch_size, or add clips"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _num_batches(self, count: int) -> int:
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __len__(self) -> int:
        return sum(self._num_batches(size) for size in self._bucket_sizes.values())

    def __iter__(self):
        order = range(len(self._buckets))
        if self.shuffle:
            generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
            order = torch.randperm(len(self._buckets), generator=generator).tolist()
        by_bucket: dict[int, list[int]] = {}
        for index in order:
            by_bucket.setdefault(self._buckets[index], []).append(index)
        rank = {index: position for position, index in enumerate(order)}
        batches = [
            indices[start : start + self.batch_size]
            for indices in by_bucket.values()
            for start in range(0, self._num_batches(len(indices)) * self.batch_size, self.batch_size)
        ]
        return iter(sorted(batches, key=lambda batch: rank[batch[0]]))
