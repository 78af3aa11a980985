"""The measurements: the IDM and its real-footage reference, generated clips, generated streams, and the paired
speed of two ways to stream.

Each returns JSON-ready measures; ``thematrix.evaluation`` (``__main__``) is their command line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX
from safetensors.torch import load_file, save_file

from stage3.cogvideox.pipeline_cogvideox import SwinDPMPipeline, condition_control
from thematrix.acceleration import apply_stream_fast_paths
from thematrix.controls import ControlVocabulary, latent_frame_controls
from thematrix.data.dataset import UINT8_HALF_RANGE
from thematrix.data.initial_clip import InitialClip
from thematrix.evaluation.footage import (
    load_real_clips,
    real_footage_measures,
    weights_fingerprint,
    worst_mean_bin_reference,
)
from thematrix.evaluation.generation import (
    CLIPS_PER_BATCH,
    ScoredVideo,
    StreamSetting,
    StreamTiming,
    clip_pipeline,
    commanded_controls,
    frame_size,
    generate_clips,
    generate_stream,
    model_vocabulary,
    native_latent_frames,
    stream_initial_frames,
    stream_pipeline,
    temporal_compression,
)
from thematrix.evaluation.idm import (
    IdmTraining,
    InverseDynamicsModel,
    check_ignored_box,
    predict,
    train_idm,
    window_ends,
)
from thematrix.evaluation.metrics import (
    FeatureStats,
    agreement,
    ceiling_for_mix,
    chance_levels,
    clustered_standard_error,
    colour_counts,
    frechet_distance,
    histogram_of,
    total_variation,
)
from thematrix.evaluation.report import SHEET_VIDEOS, device_name, sheet_row
from thematrix.model_dir import generation_defaults

logger = logging.getLogger(__name__)
# Latent frames by which a video's response to a command may lag: control_following's "lagged" agreement.
RESPONSE_LAGS = (1, 2)

# The drift reference (footage.worst_mean_bin_reference): its quantile, how many draws estimate it, their seed.
DRIFT_REFERENCE_QUANTILE = 0.95
DRIFT_REFERENCE_DRAWS = 10_000
DRIFT_REFERENCE_SEED = 0

REFERENCE_TENSORS = "reference.safetensors"
REAL_FOOTAGE_MEASURES = "real_footage.json"
IDM_TRAINING = "training.json"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class IdmData:
    """Where the IDM learns and is tested: footage recorded apart (disjoint episodes), read at ``fps``."""

    data_root: str
    index_file: str
    heldout_data_root: str
    heldout_index_file: str
    fps: float
    max_frames: int  # longest stretch read from a clip (4k+1 frames)
    # Real footage played as the streams are (random keys, long episodes), whose bins' spread a stream's bins are
    # judged by; None: the held-out clips'. A player that keeps to the track shows more track than random keys do.
    drift_data_root: str | None = None
    drift_index_file: str | None = None
    drift_max_frames: int | None = None  # None: max_frames


def build_idm(
    model_dir: str | Path,
    vocabulary: ControlVocabulary,
    data: IdmData,
    training: IdmTraining,
    output_dir: str | Path,
    bin_frames: int,
    ignored_box: Sequence[int] = (),
) -> dict:
    """Train an IDM on the VAE reconstructions of ``data``'s clips, measure it and the held-out reference, save
    both to ``output_dir``; returns the real-footage measures. ``ignored_box``: see ``InverseDynamicsModel``."""
    device = default_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vae = AutoencoderKLCogVideoX.from_pretrained(model_dir, subfolder="vae", dtype=dtype).to(device).eval()
    c = vae.config.temporal_compression_ratio
    height, width = vae.config.sample_height, vae.config.sample_width
    check_ignored_box(ignored_box, height, width)
    read = dict(fps=data.fps, height=height, width=width, temporal_compression=c, max_frames=data.max_frames, vae=vae)
    train = load_real_clips(data.data_root, data.index_file, vocabulary, **read)
    heldout = load_real_clips(data.heldout_data_root, data.heldout_index_file, vocabulary, **read)
    drift = None
    if data.drift_data_root is not None:
        drift_read = dict(read, max_frames=data.drift_max_frames or data.max_frames)
        drift = load_real_clips(data.drift_data_root, data.drift_index_file, vocabulary, **drift_read)
    logger.info(
        "IDM data: %d training clips (%d frames), %d held-out clips (%d frames), drift reference: %s",
        len(train.lengths),
        len(train.frames),
        len(heldout.lengths),
        len(heldout.frames),
        "the held-out clips" if drift is None else f"{len(drift.lengths)} clips ({len(drift.frames)} frames)",
    )
    torch.manual_seed(training.seed)
    idm = InverseDynamicsModel(
        control_tokens=vocabulary.tokens,
        control_phrases=vocabulary.phrases,
        control_null_phrase=vocabulary.null_phrase,
        frames_per_latent=c,
        height=height,
        width=width,
        fps=data.fps,
        vae_fingerprint=weights_fingerprint(vae),
        ignored_box=tuple(ignored_box),
    ).to(device)
    ends = train.window_ends(c)
    losses = train_idm(idm, train.frames.to(device), ends.to(device), train.labels[ends].to(device), training)
    measures, tensors = real_footage_measures(idm, heldout, train, bin_frames, drift)
    measures["training_clips"] = len(train.lengths)
    output_dir = Path(output_dir)
    idm.save_pretrained(output_dir)
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(output_dir / REFERENCE_TENSORS))
    (output_dir / REAL_FOOTAGE_MEASURES).write_text(json.dumps(measures, indent=1) + "\n")
    record = {"settings": asdict(training), "data": asdict(data), "loss": losses}
    (output_dir / IDM_TRAINING).write_text(json.dumps(record) + "\n")
    return measures


@dataclass
class Reference:
    """A trained IDM with the statistics of the real footage it was tested on."""

    idm: InverseDynamicsModel
    histogram: torch.Tensor
    features: FeatureStats
    measures: dict

    @classmethod
    def load(cls, idm_dir: str | Path, device: torch.device | None = None) -> Reference:
        idm_dir = Path(idm_dir)
        if not (idm_dir / REFERENCE_TENSORS).is_file():
            raise FileNotFoundError(
                f"--idm {idm_dir}: no {REFERENCE_TENSORS}; pass the output_dir of `python -m thematrix.evaluation idm`"
            )
        idm = InverseDynamicsModel.from_pretrained(idm_dir).to(device or default_device()).eval()
        tensors = load_file(str(idm_dir / REFERENCE_TENSORS))
        measures = json.loads((idm_dir / REAL_FOOTAGE_MEASURES).read_text())
        features = FeatureStats(tensors["feature_mean"], tensors["feature_covariance"], measures["idm"]["count"])
        return cls(idm, tensors["histogram"], features, measures)

    @property
    def vocabulary(self) -> ControlVocabulary:
        config = self.idm.config
        return ControlVocabulary(
            tuple(config.control_tokens), tuple(config.control_phrases), config.control_null_phrase
        )

    def token_ids(self, tokens: list[str]) -> torch.Tensor:
        return torch.tensor(self.vocabulary.encode(tokens), dtype=torch.long)

    def check_frames(self, height: int, width: int, fingerprint: str, fps: float | None) -> None:
        """Refuse a model whose frames the IDM cannot read as it learnt to: another size, or another frame rate
        (``fps`` as the model records it; a base model records none), at which a latent frame spans another
        stretch of play; warn where the VAE differs."""
        config = self.idm.config
        if fps is not None and fps != config.fps:
            raise ValueError(
                f"the model makes video at {fps:g} fps, the IDM reads it at {config.fps:g}: a window of its frames "
                "spans another stretch of play than the IDM learnt from; train an IDM with --fps at the model's rate"
            )
        if (height, width) != (config.height, config.width):
            raise ValueError(
                f"the model makes {height}x{width} frames, the IDM reads {config.height}x{config.width}: "
                "train an IDM at the model's size"
            )
        if fingerprint != config.vae_fingerprint:
            logger.warning(
                "the model's VAE is not the one the IDM learnt through: its ceiling and reference are "
                "measured in another domain than this model's frames"
            )

    def colour_distance(self, counts: torch.Tensor) -> float:
        """Total variation between the colour histogram of frames' ``colour_counts`` and held-out real footage's."""
        return total_variation(histogram_of(counts), self.histogram)

    def commands(self, vocabulary: ControlVocabulary | None) -> ControlVocabulary:
        """The tokens to command: those of the model's ``vocabulary`` (the IDM's for a model without controls) that
        the held-out footage holds, since only there is the IDM's accuracy, the ceiling, known."""
        vocabulary = vocabulary or self.vocabulary
        unknown = [token for token in vocabulary.tokens if token not in self.vocabulary.tokens]
        if unknown:
            raise ValueError(
                f"the model's control tokens {unknown} are not among the IDM's {list(self.vocabulary.tokens)}: "
                "train the IDM on footage of the model's game"
            )
        measured = self.measures["idm"]["per_class"]
        kept = [
            (token, phrase)
            for token, phrase in zip(vocabulary.tokens, vocabulary.phrases)
            if measured[token] is not None
        ]
        if not kept:
            raise ValueError("the held-out footage holds none of the model's control tokens: nothing can be scored")
        return ControlVocabulary(
            tuple(token for token, _ in kept), tuple(phrase for _, phrase in kept), vocabulary.null_phrase
        )


@dataclass
class VideoScores:
    """A video's colour counts per frame (``metrics.colour_counts``) and, for each scored latent frame, the end of
    its window, the command, the IDM's prediction and features: all the measures need, without the frames."""

    colour_counts: torch.Tensor
    ends: torch.Tensor
    commanded: torch.Tensor
    predicted: torch.Tensor
    features: torch.Tensor

    @classmethod
    def of(cls, reference: Reference, video: ScoredVideo) -> VideoScores:
        ends = window_ends(len(video.frames), len(video.latent_tokens), reference.idm.config.frames_per_latent)
        kept = [(end, token) for end, token in zip(ends, video.latent_tokens) if end is not None]
        ends = torch.tensor([end for end, _ in kept], dtype=torch.long)
        predicted, features = predict(reference.idm, video.frames, ends)
        tokens = reference.token_ids([token for _, token in kept])
        return cls(colour_counts(video.frames), ends, tokens, predicted, features)

    @property
    def num_frames(self) -> int:
        return len(self.colour_counts)

    def between(self, start: int, stop: int) -> VideoScores:
        """Frames ``[start, stop)`` and the latent frames whose windows end among them."""
        inside = (self.ends >= start) & (self.ends < stop)
        return VideoScores(
            self.colour_counts[start:stop],
            self.ends[inside] - start,
            self.commanded[inside],
            self.predicted[inside],
            self.features[inside],
        )


def control_following(
    reference: Reference,
    scores: list[VideoScores],
    commands: ControlVocabulary,
    cluster_frames: int | None = None,
) -> dict:
    """IDM agreement with the commands, beside chance (over the commanded tokens) and the IDM's real-footage
    accuracy at the same class mix (``share_of_ceiling`` is None when that accuracy is 0). ``standard_error``: the
    agreement's, over clusters of frames that fail or agree together: each video, or with ``cluster_frames`` each
    stretch of that many frames of a video (a stream is one long video). ``lagged``: the agreement
    of each latent frame's reading with the command of ``k`` latent frames before (``RESPONSE_LAGS``), within each
    video: a model whose videos respond late agrees more there than at lag 0 (keys are held over several frames,
    so lagged agreement is high for any model that follows; compare it with lag 0, not with chance)."""
    commanded = torch.cat([score.commanded for score in scores])
    tokens = reference.vocabulary.tokens
    measured = agreement(torch.cat([score.predicted for score in scores]), commanded, tokens)
    ceiling = ceiling_for_mix(reference.measures["idm"]["per_class"], measured["counts"])
    clusters = scores
    if cluster_frames is not None:
        clusters = [
            score.between(start, start + cluster_frames)
            for score in scores
            for start in range(0, score.num_frames, cluster_frames)
        ]
    standard_error = clustered_standard_error(
        [int((cluster.predicted == cluster.commanded).sum()) for cluster in clusters],
        [len(cluster.commanded) for cluster in clusters],
    )
    lagged = {}
    for lag in RESPONSE_LAGS:
        late = [score for score in scores if len(score.commanded) > lag]
        if late:
            read = torch.cat([score.predicted[lag:] for score in late])
            lagged[str(lag)] = agreement(read, torch.cat([score.commanded[:-lag] for score in late]), tokens)
    return dict(
        measured,
        standard_error=standard_error,
        chance=chance_levels(commanded, len(commands.tokens)),
        real_ceiling=ceiling,
        share_of_ceiling=measured["accuracy"] / ceiling if ceiling else None,
        lagged=lagged,
    )


def domain_fit(reference: Reference, scores: list[VideoScores]) -> dict:
    """Distances of the generated frames to the held-out real frames: colour histograms and IDM features."""
    features = FeatureStats.of(torch.cat([score.features for score in scores]))
    return {
        "total_variation": reference.colour_distance(torch.cat([score.colour_counts for score in scores])),
        "frechet": frechet_distance(features, reference.features),
    }


def evaluate_clips(
    model_dir: str | Path,
    reference: Reference,
    *,
    prompt: str,
    num_clips: int,
    num_latent_frames: int | None,
    num_inference_steps: int,
    guidance_scale: float,
    control_guidance_scale: float,
    seed: int,
    batch_size: int = CLIPS_PER_BATCH,
) -> tuple[dict, list[torch.Tensor]]:
    """Clips under random commands: control following (at chance for a model without controls) and domain fit,
    ``batch_size`` clips to a forward (each drawing the noise it would alone). Returns the measures and the contact
    sheet's rows (the first clips')."""
    pipeline = clip_pipeline(model_dir)
    vocabulary = model_vocabulary(pipeline)
    commands = reference.commands(vocabulary)
    reference.check_frames(*frame_size(pipeline), weights_fingerprint(pipeline.vae), generation_defaults(model_dir).fps)
    num_latent_frames = num_latent_frames or native_latent_frames(pipeline)
    seeds = [seed + index for index in range(num_clips)]
    videos = generate_clips(
        pipeline,
        prompt,
        [commanded_controls(commands, num_latent_frames, clip_seed) for clip_seed in seeds],
        seeds,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        control_guidance_scale=control_guidance_scale,
        batch_size=batch_size,
    )
    scores = [VideoScores.of(reference, video) for video in videos]
    measures = {
        "model_takes_controls": vocabulary is not None,
        "commanded_tokens": list(commands.tokens),
        "clips": num_clips,
        "frames_per_clip": len(videos[0].frames),
        "control_following": control_following(reference, scores, commands),
        "domain_fit": domain_fit(reference, scores),
    }
    frames_per_latent = reference.idm.config.frames_per_latent
    return measures, [sheet_row(video, frames_per_latent) for video in videos[:SHEET_VIDEOS]]


def initial_clips(
    reference: Reference,
    data_root: str,
    index_file: str,
    pipeline: SwinDPMPipeline,
    num_groups: int,
    group_size: int,
    count: int,
) -> list[InitialClip]:
    """The first frames of ``count`` real clips (clips repeat if fewer) that a stream of ``num_groups`` groups of
    ``group_size`` latent frames starts from, each with its condition latent frame's own control, as training
    pairs them (a stream told another key for that frame starts from a window it never saw)."""
    num_frames, c = stream_initial_frames(pipeline, num_groups, group_size), temporal_compression(pipeline)
    height, width = frame_size(pipeline)
    clips = load_real_clips(
        data_root,
        index_file,
        reference.vocabulary,
        fps=reference.idm.config.fps,
        height=height,
        width=width,
        temporal_compression=c,
        max_frames=num_frames,
    )
    usable = [index for index, length in enumerate(clips.lengths) if length == num_frames]
    if not usable:
        raise ValueError(
            f"{index_file}: no clip has the {num_frames} frames a stream starts from "
            f"(at {reference.idm.config.fps:g} fps); record longer clips"
        )
    starts = []
    for index in range(count):
        clip = usable[index % len(usable)]
        frame_tokens = [reference.vocabulary.tokens[label] for label in clips.clip_labels(clip).tolist()]
        latent_tokens = latent_frame_controls(frame_tokens, c)
        video = clips.clip(clip).float() / UINT8_HALF_RANGE - 1
        control = condition_control(latent_tokens, pipeline.vae)
        starts.append(InitialClip(video, Path(clips.paths[clip]).name, initial_control=control))
    return starts


def per_bin(reference: Reference, scores: list[VideoScores], bin_frames: int) -> list[dict]:
    """Per ``bin_frames``-frame bin of the streams: the histogram distance to the reference (mean and max over
    the streams) and the IDM's agreement with the commands of the latent frames that end in the bin."""
    bins = []
    for start in range(0, min(score.num_frames for score in scores) - bin_frames + 1, bin_frames):
        inside = [score.between(start, start + bin_frames) for score in scores]
        distances = [reference.colour_distance(score.colour_counts) for score in inside]
        commanded = torch.cat([score.commanded for score in inside])
        predicted = torch.cat([score.predicted for score in inside])
        bins.append(
            {
                "start_frame": start,
                "total_variation": sum(distances) / len(distances),
                "total_variation_max": max(distances),
                "control_following": (predicted == commanded).float().mean().item() if len(commanded) else None,
            }
        )
    return bins


def drift_reference(reference: Reference, num_streams: int, num_bins: int) -> dict | None:
    """How far the streams' worst bin (``per_bin``'s mean over the streams) may lie from the game for streams as
    far from it as real footage's bins (``footage.worst_mean_bin_reference``); None for an IDM made before its
    bins were kept."""
    real_bins = reference.measures.get("real_bins_total_variation_values")
    if not real_bins or not num_bins:
        return None
    return {
        "worst_bin_quantile": worst_mean_bin_reference(
            real_bins,
            num_streams,
            num_bins,
            quantile=DRIFT_REFERENCE_QUANTILE,
            draws=DRIFT_REFERENCE_DRAWS,
            seed=DRIFT_REFERENCE_SEED,
        ),
        "quantile": DRIFT_REFERENCE_QUANTILE,
        "streams": num_streams,
        "bins": num_bins,
    }


@dataclass
class StreamRecords:
    """Each finished stream's scores, timing and contact-sheet row, one file a stream in ``folder`` (beside the
    measures): a killed evaluation resumes at the stream it was on, and a later one with more streams adds to
    those it made. A record keeps the settings that made its stream what it is; one made under others is refused."""

    folder: Path

    def path(self, index: int) -> Path:
        return self.folder / f"stream_{index:04d}.pt"

    def load(self, index: int, settings: dict) -> tuple[VideoScores, StreamTiming, torch.Tensor | None] | None:
        path = self.path(index)
        if not path.exists():
            return None
        record = torch.load(path, weights_only=True)
        differing = sorted(
            key
            for key in settings.keys() | record["settings"].keys()
            if settings.get(key) != record["settings"].get(key)
        )
        if differing:
            raise ValueError(
                f"{path}: this stream was made with another {', '.join(differing)} than this evaluation's: delete "
                f"{self.folder} to start over, or pass another --output"
            )
        scores = VideoScores(**dict(record["scores"], colour_counts=record["scores"]["colour_counts"].long()))
        return scores, StreamTiming(**record["timing"]), record["sheet_row"]

    def save(
        self, index: int, settings: dict, scores: VideoScores, timing: StreamTiming, sheet: torch.Tensor | None
    ) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # int32 halves the file; a frame holds far fewer than 2**31 pixels
        stored = dict(asdict(scores), colour_counts=scores.colour_counts.int())
        path = self.path(index)
        partial = path.with_suffix(".partial")
        torch.save({"settings": settings, "scores": stored, "timing": asdict(timing), "sheet_row": sheet}, partial)
        partial.replace(path)  # a run killed while saving leaves no half-written record


def evaluate_streams(
    model_dir: str | Path,
    sampler: str,
    reference: Reference,
    *,
    data_root: str,
    index_file: str,
    prompt: str,
    num_streams: int,
    num_frames: int,
    num_groups: int,
    group_size: int,
    num_inference_steps: int,
    guidance_scale: float,
    control_guidance_scale: float,
    seed: int,
    bin_frames: int,
    edge_frames: int,
    records_dir: Path,
    overlap_decode: bool = False,
    compiled: bool = False,
    fp8: bool = False,
    part: tuple[int, int] | None = None,
) -> tuple[dict | None, list[torch.Tensor]]:
    """Streams from real clips under random commands: control following and domain fit overall, over the first
    and the last ``edge_frames`` frames, per ``bin_frames`` bin (drift), and the speed (with ``overlap_decode``,
    each group decoded while the next one's forwards run; with ``compiled``, on the fast path, the first stream's
    first frame paying the compilation; with ``fp8``, the blocks' matmuls in FP8). Each finished stream is kept in
    ``records_dir`` (``StreamRecords``); streams found there are not made again. Returns the measures and the
    contact sheet's rows (the first streams'). With ``part = (k, n)`` only the streams k, k + n, k + 2n, ... are
    made and kept, and no measures returned: one of n processes sharing ``records_dir``, which a run without a part
    gathers."""
    if 2 * edge_frames > num_frames:
        raise ValueError(
            f"streams of {num_frames} frames have no first and last {edge_frames} frames apart; "
            "lower the edge frames or make the streams longer"
        )
    setting = StreamSetting(str(model_dir), sampler, num_groups, group_size, num_inference_steps, guidance_scale)
    pipeline = stream_pipeline(model_dir, sampler)
    # The saved weights name the model: printed before --fp8 quantizes them (FP8 tensors have no bytes to print).
    transformer_print, vae_print = weights_fingerprint(pipeline.transformer), weights_fingerprint(pipeline.vae)
    apply_stream_fast_paths(pipeline, fp8, compiled)
    commands = reference.commands(model_vocabulary(pipeline))
    height, width = frame_size(pipeline)
    reference.check_frames(height, width, vae_print, generation_defaults(model_dir).fps)
    starts = initial_clips(reference, data_root, index_file, pipeline, num_groups, group_size, num_streams)
    records = StreamRecords(records_dir)
    shared_settings = dict(
        transformer=transformer_print,
        vae=vae_print,
        idm=weights_fingerprint(reference.idm),
        sampler=sampler,
        prompt=prompt,
        num_frames=num_frames,
        num_groups=num_groups,
        group_size=group_size,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        control_guidance_scale=control_guidance_scale,
        overlap_decode=overlap_decode,
        compiled=compiled,
        fp8=fp8,
        device=device_name(),  # the speeds of one evaluation come from one kind of machine
    )
    frames_per_latent = reference.idm.config.frames_per_latent
    scores, timings, sheet_rows = [], [], []
    for index, start in enumerate(starts):
        if part is not None and index % part[1] != part[0]:
            continue
        initial_print = hashlib.sha256(start.video.numpy().tobytes()).hexdigest()
        stream_settings = dict(
            shared_settings, seed=seed + index, initial_clip=initial_print, initial_control=start.initial_control
        )
        found = records.load(index, stream_settings)
        if found is None:
            video, timing = generate_stream(
                pipeline,
                setting,
                prompt,
                start,
                num_frames,
                commands,
                control_guidance_scale=control_guidance_scale,
                seed=seed + index,
                overlap_decode=overlap_decode,
            )
            score = VideoScores.of(reference, video)
            sheet = sheet_row(video, frames_per_latent) if index < SHEET_VIDEOS else None
            records.save(index, stream_settings, score, timing, sheet)
            made = "made"
        else:
            score, timing, sheet = found
            made = f"kept from {records.path(index)}"
        scores.append(score)
        timings.append(timing)
        if sheet is not None:
            sheet_rows.append(sheet)
        logger.info(
            "stream %d/%d: %d frames, %.1f frames per second (%s)",
            index + 1,
            num_streams,
            score.num_frames,
            timing.frames_per_second,
            made,
        )
    if part is not None:
        return None, []
    length = min(score.num_frames for score in scores)
    edges = {}
    for name, (start, stop) in {"first": (0, edge_frames), "last": (length - edge_frames, length)}.items():
        inside = [score.between(start, stop) for score in scores]
        following = control_following(reference, inside, commands, bin_frames)
        edges[name] = {
            "frames": [start, stop],
            "control_following": following["accuracy"],
            "control_following_standard_error": following["standard_error"],
            **domain_fit(reference, inside),
        }
    bins = per_bin(reference, scores, bin_frames)
    measures = {
        "sampler": sampler,
        "commanded_tokens": list(commands.tokens),
        "streams": num_streams,
        "frames_per_stream": length,
        "control_following": control_following(reference, scores, commands, bin_frames),
        "domain_fit": domain_fit(reference, scores),
        "edges": edges,
        "bins": bins,
        "real_bins_total_variation": reference.measures["real_bins_total_variation"],
        "drift_reference": drift_reference(reference, len(scores), len(bins)),
        "real_bins_footage": reference.measures.get("real_bins_footage"),  # absent from IDMs made before it was
        "speed": {
            "frames_per_second": sum(timing.frames_per_second for timing in timings) / len(timings),
            "time_to_first_frame_s": sum(timing.time_to_first_frame_s for timing in timings) / len(timings),
        },
        # Which streams a whole measure comes from: one stream that leaves the game's look, or a machine that
        # slowed during one stream, shows here.
        "per_stream": [
            {
                "seed": seed + index,
                "control_following": control_following(reference, [score], commands)["accuracy"],
                "total_variation": reference.colour_distance(score.colour_counts),
                "frames_per_second": timing.frames_per_second,
            }
            for index, (score, timing) in enumerate(zip(scores, timings))
        ],
    }
    return measures, sheet_rows


# The two streams a paired speed compares, in the order its even rounds run them.
PAIRED_STREAMS = ("measured", "baseline")


def paired_speed(
    measured: StreamSetting,
    baseline: StreamSetting,
    reference: Reference,
    *,
    data_root: str,
    index_file: str,
    prompt: str,
    num_frames: int,
    rounds: int,
    control_guidance_scale: float,
    seed: int,
    overlap_decode: bool = False,
    compiled: bool = False,
    fp8: bool = False,
) -> dict:
    """How many times as many frames per second ``measured`` streams as ``baseline``, both timed in this process.

    Speeds measured apart (in other processes, at other times, beside other work on the machine) drift by more
    than a speed target can bear; streams run in turn in one process see the machine alike, so the ratio of their
    speeds holds where the absolute speeds drift. Each setting first makes one untimed stream (kernels chosen,
    caches warm); then each round streams both from the round's real clip and seed (round i: clip i, seed + i),
    ``num_frames`` frames each, the first of the two alternating between rounds so that neither always follows
    the other. Medians, not means: a round that something else on the machine slowed moves them little.

    With ``compiled`` both run on the fast path, the untimed streams paying the compilation; with ``fp8`` both run
    their blocks' matmuls in FP8. Returns each setting with its rounds' steady-state frames per second and time to
    first frame and their medians, each round's pace (its median chunk's rate: the stream without its stalls), and
    the speed ratio (measured / baseline): the median of the rounds' own ratios, each of two streams timed back to
    back, and beside it their range and the ratio of the two settings' medians, which unpairs the rounds (a
    teacher's slow round against a student's fast one moves it as the machine did, not as the settings differ).
    """
    settings = dict(zip(PAIRED_STREAMS, (measured, baseline)))
    pipelines = {name: stream_pipeline(setting.model_dir, setting.sampler) for name, setting in settings.items()}
    for pipeline in pipelines.values():
        apply_stream_fast_paths(pipeline, fp8, compiled)
    commands = {name: reference.commands(model_vocabulary(pipeline)) for name, pipeline in pipelines.items()}
    starts = {
        name: initial_clips(
            reference, data_root, index_file, pipeline, settings[name].num_groups, settings[name].group_size, rounds
        )
        for name, pipeline in pipelines.items()
    }

    def timed_stream(name: str, round_index: int) -> StreamTiming:
        setting, start = settings[name], starts[name][round_index]
        _, timing = generate_stream(
            pipelines[name],
            setting,
            prompt,
            start,
            num_frames,
            commands[name],
            control_guidance_scale=control_guidance_scale,
            seed=seed + round_index,
            overlap_decode=overlap_decode,
        )
        return timing

    for name in PAIRED_STREAMS:
        timed_stream(name, 0)  # the warm-up, untimed
    timings = {name: [] for name in PAIRED_STREAMS}
    first_in_round = []
    for round_index in range(rounds):
        order = PAIRED_STREAMS if round_index % 2 == 0 else PAIRED_STREAMS[::-1]
        first_in_round.append(order[0])
        for name in order:
            timings[name].append(timed_stream(name, round_index))
        logger.info(
            "round %d/%d: %s",
            round_index + 1,
            rounds,
            ", ".join(f"{name} {timings[name][-1].frames_per_second:.1f} frames per second" for name in order),
        )
    measures = {"rounds": rounds, "first_in_round": first_in_round}
    for name, setting in settings.items():
        rates = [timing.frames_per_second for timing in timings[name]]
        first_frames = [timing.time_to_first_frame_s for timing in timings[name]]
        measures[name] = {
            **asdict(setting),
            "frames_per_second": rates,
            "time_to_first_frame_s": first_frames,
            "median_frames_per_second": statistics.median(rates),
            "median_time_to_first_frame_s": statistics.median(first_frames),
            "pace_frames_per_second": [timing.median_chunk_frames_per_second for timing in timings[name]],
        }
    per_round = [
        measured_rate / baseline_rate
        for measured_rate, baseline_rate in zip(
            measures["measured"]["frames_per_second"], measures["baseline"]["frames_per_second"]
        )
    ]
    measures["frames_per_second_ratio"] = {
        "median_of_rounds": statistics.median(per_round),
        "of_medians": measures["measured"]["median_frames_per_second"]
        / measures["baseline"]["median_frames_per_second"],
        "per_round": per_round,
        "per_round_min": min(per_round),
        "per_round_max": max(per_round),
    }
    return measures
