"""Everything evaluation asks of the stages' pipelines, in one module, so a change of their API is fixed here.

Two kinds of generation, each returning a ``ScoredVideo`` (frames and the command of each latent frame):

- ``generate_clips``: text-to-video clips, each under its sequence of commanded controls, with stage 2's
  ``InteractivePipeline`` for a model with controls, or stage 1's pipeline for one without (the commands
  are then not given to the model: that is the control-free baseline, which should score at chance);
- ``generate_stream``: a Swin-DPM stream (stage 3's ``SwinDPMPipeline``) or a few-step SCM stream (stage 4's
  ``ScmPipeline``) started from a real clip, its controls drawn as stage 3's ``--random_controls`` draws them.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch

from stage1.cogvideox.pipeline_cogvideox import GameVideoPipeline
from stage1.inference import clip_sampling
from stage2.cogvideox.pipeline_cogvideox import InteractivePipeline
from stage3.cogvideox.pipeline_cogvideox import SwinDPMPipeline, window_clip_frames
from stage3.inference import SWIN_DPM_DEFAULTS, random_controls
from stage4.cogvideox.pipeline_cogvideox import ScmPipeline
from stage4.inference import FEW_STEP_DEFAULTS
from thematrix.controls import ControlVocabulary
from thematrix.data.initial_clip import InitialClip
from thematrix.evaluation.metrics import to_uint8
from thematrix.model_dir import check_model_dir, generation_defaults, transformer_class_name
from thematrix.models import InteractiveCogVideoXTransformer3DModel
from thematrix.video import pipeline_video_to_signed

logger = logging.getLogger(__name__)

STREAM_PIPELINES = {"swin-dpm": SwinDPMPipeline, "scm": ScmPipeline}
# Clips sampled in one batch: a small model's forward is bound by the host's operator calls, which a batch of clips
# shares (predicted: the mini model's 64 clips in about a quarter of the 100 s they took one at a time on an H200).
CLIPS_PER_BATCH = 8
# Each sampler's inference defaults (stage3/inference.py, stage4/inference.py), its guidance where the model records
# none; None steps = one per group.
STREAM_DEFAULTS = {"swin-dpm": SWIN_DPM_DEFAULTS, "scm": FEW_STEP_DEFAULTS}


@dataclass
class ScoredVideo:
    """``frames`` uint8 ``[n, 3, H, W]``; ``latent_tokens`` the commanded token of each latent frame, whose video
    frames are the video's last ``len(latent_tokens) * c``; frames before them are context (a clip's first
    frame, a stream's condition frame)."""

    frames: torch.Tensor
    latent_tokens: list[str]


@dataclass
class StreamTiming:
    """Seconds from the start of the stream to each emitted chunk, and the frames in each."""

    chunk_ready_s: list[float] = field(default_factory=list)
    chunk_frames: list[int] = field(default_factory=list)

    @property
    def time_to_first_frame_s(self) -> float:
        return self.chunk_ready_s[0]

    @property
    def frames_per_second(self) -> float:
        """Steady-state rate: the frames of every chunk after the first over the time they took."""
        if len(self.chunk_ready_s) < 2:
            raise ValueError("a stream rate needs at least two chunks")
        return sum(self.chunk_frames[1:]) / (self.chunk_ready_s[-1] - self.chunk_ready_s[0])

    @property
    def median_chunk_frames_per_second(self) -> float:
        """The rate of the median chunk after the first: the stream's pace without its stalls (a stall, e.g. the
        host descheduling the thread that launches the kernels, lowers ``frames_per_second`` but not this)."""
        if len(self.chunk_ready_s) < 2:
            raise ValueError("a stream rate needs at least two chunks")
        intervals = [later - earlier for earlier, later in zip(self.chunk_ready_s, self.chunk_ready_s[1:])]
        return statistics.median(self.chunk_frames[1:]) / statistics.median(intervals)


def has_controls(model_dir: str | Path) -> bool:
    """Whether the model directory's transformer takes controls (stage 2 and later)."""
    check_model_dir(model_dir, "--model_dir")
    return transformer_class_name(model_dir) == InteractiveCogVideoXTransformer3DModel.__name__


def recorded_sampling(model_dir: str | Path, prompt: str | None, guidance_scale: float | None) -> tuple[str, float]:
    """The prompt and text guidance a model's clips are sampled with, as stage 1's inference completes them
    (``clip_sampling``) from what ``model_dir`` records."""
    return clip_sampling(
        generation_defaults(check_model_dir(model_dir, "--model_dir")), prompt, guidance_scale, model_dir
    )


def clip_pipeline(model_dir: str | Path) -> GameVideoPipeline:
    """Stage 2's pipeline for a model with controls, stage 1's for one without."""
    pipeline_class = InteractivePipeline if has_controls(model_dir) else GameVideoPipeline
    return pipeline_class.from_model_dir(model_dir)


def stream_pipeline(model_dir: str | Path, sampler: str) -> SwinDPMPipeline:
    """The pipeline of ``sampler`` for a model with controls, as saved: the caller puts it on inference.py's fast
    paths (``acceleration.apply_stream_fast_paths``) once it has read what it needs of the saved weights."""
    if sampler not in STREAM_PIPELINES:
        raise ValueError(f"unknown sampler {sampler!r}; use one of {sorted(STREAM_PIPELINES)}")
    if not has_controls(model_dir):
        raise ValueError(f"--model_dir {model_dir}: streams need a model with controls (stage 3 or 4)")
    return STREAM_PIPELINES[sampler].from_model_dir(model_dir)


def model_vocabulary(pipeline: GameVideoPipeline) -> ControlVocabulary | None:
    """The controls the model takes, or None for a model without controls."""
    transformer = pipeline.transformer
    return transformer.control_vocabulary if isinstance(transformer, InteractiveCogVideoXTransformer3DModel) else None


def temporal_compression(pipeline: GameVideoPipeline) -> int:
    return pipeline.vae.config.temporal_compression_ratio


def frame_size(pipeline: GameVideoPipeline) -> tuple[int, int]:
    """(height, width) of the model's videos."""
    return pipeline.native_size[1:]


def commanded_controls(vocabulary: ControlVocabulary, count: int, seed: int) -> list[str]:
    """``count`` latent-frame commands: random keys held for a few latent frames each (stage 3's random player)."""
    return [tokens[0] for tokens in islice(random_controls(vocabulary, 1, seed), count)]


def generate_clips(
    pipeline: GameVideoPipeline,
    prompt: str,
    commands: list[list[str]],
    seeds: list[int],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    control_guidance_scale: float,
    batch_size: int = CLIPS_PER_BATCH,
) -> list[ScoredVideo]:
    """One clip of ``1 + c * (len(tokens) - 1)`` frames per entry of ``commands`` (equal lengths), ``batch_size`` to a
    forward: clip i from ``seeds[i]``, drawing the noise it would alone. A model with controls is given each clip's
    tokens."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    c = temporal_compression(pipeline)
    height, width = frame_size(pipeline)
    takes_controls = model_vocabulary(pipeline) is not None
    videos = []
    for start in range(0, len(commands), batch_size):
        batch = commands[start : start + batch_size]
        sampling = dict(
            num_frames=1 + c * (len(batch[0]) - 1),
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=[
                torch.Generator(device=pipeline.device).manual_seed(seed) for seed in seeds[start : start + batch_size]
            ],
        )
        if takes_controls:
            sampling.update(prompt=prompt, controls=batch, control_guidance_scale=control_guidance_scale)
        else:
            sampling.update(prompt=[prompt] * len(batch))
        frames = pipeline(output_type="pt", **sampling).frames
        # Latent frame 0 is the first video frame alone: no earlier frame shows its motion, so it is not scored.
        videos += [
            ScoredVideo(to_uint8(pipeline_video_to_signed(video).cpu()), list(tokens[1:]))
            for video, tokens in zip(frames, batch, strict=True)
        ]
        logger.info("clips %d/%d", len(videos), len(commands))
    return videos


def native_latent_frames(pipeline: GameVideoPipeline) -> int:
    """Latent frames of the clips the model was trained on (its transformer's ``sample_frames``)."""
    return (pipeline.native_size[0] - 1) // temporal_compression(pipeline) + 1


def stream_initial_frames(pipeline: SwinDPMPipeline, num_groups: int, group_size: int) -> int:
    """Frames of the real clip a stream starts from: a stage-3 training window with its history."""
    return window_clip_frames(pipeline.vae, num_groups, group_size)


@dataclass(frozen=True)
class StreamSetting:
    """One way to stream: a model, its sampler, its window of G groups of W latent frames, and its sampling."""

    model_dir: str
    sampler: str
    num_groups: int
    group_size: int
    num_inference_steps: int
    guidance_scale: float


def generate_stream(
    pipeline: SwinDPMPipeline,
    setting: StreamSetting,
    prompt: str,
    start: InitialClip,
    num_frames: int,
    commands: ControlVocabulary,
    *,
    control_guidance_scale: float,
    seed: int,
    overlap_decode: bool = False,
) -> tuple[ScoredVideo, StreamTiming]:
    """At least ``num_frames`` generated frames of a stream of ``setting`` (``pipeline`` is its model's) started
    from ``start``'s video ``[F0, 3, H, W]`` in [-1, 1] and the clip's own key at its condition latent frame (the
    pipeline's ``initial_control``), steered by random keys of ``commands`` (a vocabulary whose tokens the model
    takes).

    The stream's first ``num_groups`` groups re-create the initial clip's last groups from partial noise (that is
    how it starts in distribution), so their frames show the clip, not the commands: they are left out of the
    returned video; the timing counts every chunk.
    """
    num_groups, group_size = setting.num_groups, setting.group_size
    frames_per_group = temporal_compression(pipeline) * group_size
    chunks = pipeline.stream(
        prompt,
        start.video,
        random_controls(commands, group_size, seed),
        num_groups=num_groups,
        group_size=group_size,
        num_inference_steps=setting.num_inference_steps,
        guidance_scale=setting.guidance_scale,
        control_guidance_scale=control_guidance_scale,
        generator=torch.Generator(device=pipeline.device).manual_seed(seed),
        max_groups=num_groups + math.ceil(num_frames / frames_per_group),
        initial_control=start.initial_control,
        overlap_decode=overlap_decode,
    )
    frames, tokens, timing = [], [], StreamTiming()
    start = time.perf_counter()
    for chunk in chunks:
        # The chunk's frames are on the CPU, so the GPU's work for them is done: the clock is honest.
        timing.chunk_ready_s.append(time.perf_counter() - start)
        timing.chunk_frames.append(len(chunk.frames))
        if chunk.group_index >= num_groups:
            frames.append(to_uint8(chunk.frames))
            tokens.extend(chunk.controls)
    return ScoredVideo(torch.cat(frames), tokens), timing
