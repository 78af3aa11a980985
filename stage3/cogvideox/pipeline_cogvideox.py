"""Stage 3's pipeline: an unbounded video stream, steered live, by shifted-window denoising (Swin-DPM).

The window is ``[1, 1 + G * W, C, h, w]``: a clean condition latent frame, then G groups of W latent
frames at staggered noise bands, group 0 the least noisy. Each outer iteration moves every group down
one band (N / G steps); group 0 is then clean and is emitted, its last latent frame becomes the next
condition frame, the window shifts by one group, and pure noise enters as the noisiest group with the
controls the player gives for it. Only the window and the VAE decoder's caches persist, so memory is
flat however long the stream runs.

Start (in distribution, as training sees a window): the last ``1 + c * (H + G * W)`` frames of the initial
clip are encoded as a training clip is (c = ``vae.config.temporal_compression_ratio``, 4 for CogVideoX;
H = ``history_latent_frames``, 2): H history latents, the condition latent (c video frames with causal
context, as every later condition frame), then G groups of W. The condition stays clean and group g is
noised with fresh noise to the top of its band, so every per-frame timestep vector the transformer sees,
the first windows included, is one training draws; the stream regenerates the clip's last G * W latent
frames from there and continues. Where a group's band top has no signal left (band G - 1 under zero terminal SNR,
as CogVideoX's), its frames would be noised away: they are not encoded, which shortens the wait for the first
frame by that share of the encode.

Overlap (``overlap_decode``): each emitted group is decoded on a second CUDA stream while the next group's
forwards run, and is handed out once those are queued, so a group's frames come one group's forwards later and the
controls asked when a group enters were chosen having seen one group less. Same output as without. Off a GPU the
work keeps that order without running concurrently.

Decode on its own device: the VAE may live on another device than the transformer (``place_decoder``, e.g. a
second GPU); the stream then decodes there, always overlapped (a decode the host waited for would gain nothing from
a second GPU): each emitted group is copied to the VAE's device, ordered after the forwards that made it, and
decoded while the transformer's device runs the next group's forwards. Same output as the overlapped stream on one
device (bitwise on the CPU; on GPUs, up to each device's choice of kernels).

Context parallelism (thematrix/parallel.py): every rank runs the stream's forwards in step; only the process that
holds the VAE's weights (rank 0) encodes the initial clip, sending its latent distribution to the others, and decodes
and yields the groups, on its own GPU or on one outside the group (``place_decoder``). The others hold none
(``place_decoder(None)``), decode nothing and yield nothing.

Frame accounting: the decoder is primed with ``[history, condition]``, its first batch (output discarded),
so each emitted group of W latent frames decodes whole into ``c * W`` video frames (W must be a multiple
of the decoder's frame batch, 2). K groups give ``c * W * K`` frames, exactly ``vae.decode`` of
``[history, condition, group_0, ..., group_K-1]`` without its first ``1 + c * H`` frames.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.pipelines.cogvideo.pipeline_output import CogVideoXPipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from stage2.cogvideox.pipeline_cogvideox import InteractivePipeline
from stage3.cogvideox.scheduler import CONDITION_FRAMES, SwinScheduler
from thematrix.controls import ControlError, ControlVocabulary
from thematrix.devices import copy_to_device
from thematrix.model_dir import SWIN_DPM_SAMPLER, check_sampler
from thematrix.parallel import broadcast_from_main, is_context_parallel
from thematrix.schedules import GroupedInferenceSchedule, expand_group_timesteps
from thematrix.streaming_vae import StreamingDecoder, first_batch_size

# One list of W tokens per group: a callable of the group's index, an iterable of lists (or of "W,JUMP"
# strings), or one "W,W,JUMP" string cycled per latent frame.
Controls = str | Callable[[int], Sequence[str]] | Iterable[str | Sequence[str]]
VIDEO_CHANNELS = 3
# The reference recipe's window, 4 groups of 4 latent frames: what a stream uses when neither the caller nor the
# model directory says otherwise.
RECIPE_NUM_GROUPS, RECIPE_GROUP_SIZE = 4, 4
# Where ``place_decoder(None)`` puts the VAE: its weights freed, its config kept.
NO_DECODER_DEVICE = torch.device("meta")


def history_latent_frames(vae) -> int:
    """H: latent frames encoded before the condition latent, so that ``[history, condition]`` is exactly the
    streaming decoder's first batch (2 for CogVideoX: the causal first frame and one more). Training drops
    them from every clip; the stream decodes them only to prime the decoder's caches."""
    return first_batch_size(vae) - CONDITION_FRAMES


def condition_control(control_tokens: Sequence[str], vae) -> str:
    """The control of a window clip's condition latent frame (latent frame H, after the history)."""
    return control_tokens[history_latent_frames(vae)]


def window_clip_frames(vae, num_groups: int, group_size: int) -> int:
    """Video frames of a clip that encodes to one window and its history: 1 + c * (H + G * W) (73 for G = W = 4)."""
    return 1 + vae.config.temporal_compression_ratio * (history_latent_frames(vae) + num_groups * group_size)


@dataclass
class StreamChunk:
    """One emitted group, decoded.

    ``frames`` ``[c * W, 3, H, W]`` float32 in [-1, 1] on the CPU; ``controls`` the W tokens of the group;
    ``frame_controls`` the control active in each frame; ``latents`` ``[W, C, h, w]`` on the CPU, the clean
    latent frames the chunk's frames decode from; ``group_index`` counts from 0; ``elapsed_s`` is the time
    from the start of the stream until the chunk was ready; ``state_nbytes`` the bytes the stream holds
    between chunks (window and decoder caches).
    """

    frames: torch.Tensor
    controls: list[str]
    frame_controls: list[str]
    latents: torch.Tensor
    group_index: int
    elapsed_s: float
    state_nbytes: int


@dataclass
class StreamPipelineOutput(CogVideoXPipelineOutput):
    """``generate``'s result: ``CogVideoXPipelineOutput`` plus ``frame_controls``, per video the control active in
    each of its frames."""

    frame_controls: list[list[str]]


def control_source(controls: Controls, vocabulary: ControlVocabulary, group_size: int) -> Callable[[int], Sequence]:
    """``controls`` as a function of the group index; called once per group, in order."""
    if isinstance(controls, str):
        pattern = vocabulary.parse(controls)
        return lambda group: [pattern[(group * group_size + k) % len(pattern)] for k in range(group_size)]
    if callable(controls):
        return controls
    try:
        iterator = iter(controls)
    except TypeError:
        raise ControlError(
            f"controls must be a 'W,JUMP' string, a callable(group_index) -> {group_size} tokens, or an iterator of "
            f"token lists; got a {type(controls).__name__}"
        ) from None

    def next_group(group: int) -> Sequence:
        try:
            return next(iterator)
        except StopIteration:
            raise ControlError(
                "the controls iterator ended: the window holds the groups ahead of the emitted one, so K groups "
                "need K + num_groups - 1 control lists; give more, an endless iterator, or a smaller max_groups"
            ) from None

    return next_group


class SwinDPMPipeline(InteractivePipeline):
    """Stage 2's pipeline plus ``stream``/``generate``: unbounded, live-steered Swin-DPM sampling."""

    scheduler_class = SwinScheduler
    # The sampler a model directory must record its window was trained for (stage 3's; see check_sampler).
    trained_sampler = SWIN_DPM_SAMPLER

    @classmethod
    def check_stage_model(cls, model_dir: str | Path, setting: str = "--model_dir") -> Path:
        """Stage 2's checks, then that the model's window was trained for this pipeline's sampler: a stage-2
        model has the same transformer class but never learned the shifted window."""
        model_dir = super().check_stage_model(model_dir, setting)
        check_sampler(model_dir, cls.trained_sampler, setting)
        return model_dir

    @property
    def device(self) -> torch.device:
        """The device the stream computes on: the transformer's (the VAE may decode on another, ``place_decoder``)."""
        return self.transformer.device

    def place_decoder(self, device: str | torch.device | None) -> None:
        """Put the VAE on ``device`` (e.g. a second GPU), where every stream then decodes, overlapped with the
        transformer's forwards on its own device; the initial clip is encoded there too. ``None``: this process
        decodes nothing (a context-parallel rank other than 0): the VAE's weights are freed (it keeps its config)."""
        self.vae.to(device or NO_DECODER_DEVICE)

    @property
    def decodes(self) -> bool:
        """Whether this process holds the VAE's weights, so its streams encode, decode and yield (``place_decoder``)."""
        return self.vae.device != NO_DECODER_DEVICE

    @property
    def decodes_apart(self) -> bool:
        """Whether the VAE lives on another device than the transformer (``place_decoder``)."""
        return self.decodes and self.vae.device != self.transformer.device

    def stream(
        self,
        prompt: str,
        initial_video: torch.Tensor,
        controls: Controls,
        negative_prompt: str = "",
        num_groups: int = RECIPE_NUM_GROUPS,
        group_size: int = RECIPE_GROUP_SIZE,
        num_inference_steps: int = 20,
        guidance_scale: float = 6.0,
        control_guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        max_groups: int | None = None,
        initial_control: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        overlap_decode: bool = False,
    ) -> Iterator[StreamChunk]:
        """Start a stream; returns an iterator of ``StreamChunk``, one per emitted group (endless if ``max_groups`` is None).

        ``initial_video`` ``[F0, 3, H, W]`` in [-1, 1] with at least ``window_clip_frames`` frames: its last ones
        start the stream (see the module docstring). ``controls`` gives each group's W tokens when the group
        enters the window (at start for the first ``num_groups`` groups, then after each emitted chunk), so a
        player steers the groups still to come. ``initial_control`` is the first condition frame's control
        (default: the first group's first token); later condition frames keep the control of the frame they
        were. ``overlap_decode`` decodes each group while the next one's forwards run (see the module docstring);
        a VAE on its own device (``place_decoder``) always does.
        Arguments are checked here; the work runs as the iterator is consumed.
        """
        schedule = self.scheduler.grouped_schedule(num_inference_steps, num_groups)
        decoder = StreamingDecoder(self.vae)
        if group_size < 1 or group_size % decoder.frame_batch_size:
            raise ValueError(
                f"group_size must be a positive multiple of {decoder.frame_batch_size} (the VAE decoder's latent "
                f"frame batch) so each group decodes as soon as it is emitted; got {group_size}"
            )
        if max_groups is not None and max_groups < 1:
            raise ValueError(f"max_groups must be at least 1 (or None for an endless stream), got {max_groups}")
        clip = self.window_clip(initial_video, num_groups, group_size)
        vocabulary = self.transformer.control_vocabulary
        if initial_control is not None:
            vocabulary.token_id(initial_control)
        source = control_source(controls, vocabulary, group_size)
        if (prompt_embeds is None) != (negative_prompt_embeds is None):
            raise ValueError(
                "pass prompt_embeds and negative_prompt_embeds together, or neither (then prompt is encoded)"
            )
        return self._stream(
            prompt=prompt,
            negative_prompt=negative_prompt,
            clip=clip,
            source=source,
            initial_control=initial_control,
            schedule=schedule,
            decoder=decoder,
            group_size=group_size,
            guidance_scale=guidance_scale,
            control_guidance_scale=control_guidance_scale,
            generator=generator,
            max_groups=max_groups,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            overlap_decode=overlap_decode,
        )

    @staticmethod
    def check_steps(num_inference_steps: int, num_groups: int) -> None:
        """Refuse a step count this stream cannot take (before any work; the inference CLI checks its options)."""
        GroupedInferenceSchedule.check_steps(num_inference_steps, num_groups)

    def generate(
        self,
        prompt: str,
        initial_video: torch.Tensor,
        controls: Controls,
        max_groups: int,
        output_type: str = "pil",
        return_dict: bool = True,
        **stream_options,
    ) -> StreamPipelineOutput | tuple:
        """The first ``max_groups`` groups of ``stream`` as one video of ``c * W * K`` frames, post-processed as
        ``CogVideoXPipeline`` does to ``output_type`` ("pil", "np", or "pt": ``[1, F, 3, H, W]`` in [0, 1], on the
        CPU), with the control active in each frame; with ``return_dict=False``, (frames, frame_controls)."""
        chunks = list(self.stream(prompt, initial_video, controls, max_groups=max_groups, **stream_options))
        video = torch.cat([chunk.frames for chunk in chunks])  # [F, 3, H, W] in [-1, 1]
        frames = self.video_processor.postprocess_video(video=video.permute(1, 0, 2, 3)[None], output_type=output_type)
        frame_controls = [[label for chunk in chunks for label in chunk.frame_controls]]
        if not return_dict:
            return frames, frame_controls
        return StreamPipelineOutput(frames=frames, frame_controls=frame_controls)

    def window_clip(self, video: torch.Tensor, num_groups: int, group_size: int) -> torch.Tensor:
        """The last ``window_clip_frames`` frames of ``video`` ``[F0, 3, H, W]``, after checking its shape."""
        frames = window_clip_frames(self.vae, num_groups, group_size)
        alignment = self.vae_scale_factor_spatial * self.transformer.config.patch_size
        if video.ndim != 4 or video.shape[1] != VIDEO_CHANNELS:
            raise ValueError(
                f"initial_video must be [frames, {VIDEO_CHANNELS}, height, width] in [-1, 1], got shape {list(video.shape)}"
            )
        if len(video) < frames:
            raise ValueError(
                f"initial_video has {len(video)} frames; a stream of {num_groups} groups of {group_size} latent frames "
                f"starts from the last {frames} frames of a clip (1 + {self.temporal_compression} x "
                f"({history_latent_frames(self.vae)} + {num_groups} x {group_size})): pass a longer clip"
            )
        height, width = video.shape[-2:]
        if height % alignment or width % alignment:
            raise ValueError(
                f"initial_video is {height}x{width}; height and width must be multiples of {alignment} (VAE "
                f"downsampling x transformer patch size); resize it to the model's size {self.native_size[1:]}"
            )
        return video[-frames:]

    @torch.no_grad()
    def encode_window(self, clip: torch.Tensor) -> DiagonalGaussianDistribution:
        """The VAE's latent distribution ``[1, C, H + 1 + G * W, h, w]`` of a window clip ``[F, 3, H, W]``: history,
        condition, groups. Stage 3's training encodes its clips alike and drops the first H latent frames."""
        return self.vae.encode(clip.to(self.vae.device, self.vae.dtype).permute(1, 0, 2, 3)[None]).latent_dist

    def unencoded_latent_frames(self, pure_noise_frames: int) -> int:
        """How many of a window clip's last latent frames, which the stream starts at pure noise, it leaves out of
        the encode: all of them, unless leaving out their ``c`` video frames each would move the encoder's frame
        batches (whose group norms would then change every other latent); then none."""
        if self.temporal_compression * pure_noise_frames % self.vae.num_sample_frames_batch_size:
            return 0
        return pure_noise_frames

    @torch.no_grad()
    def window_latent_distribution(self, clip: torch.Tensor, unencoded_frames: int = 0) -> DiagonalGaussianDistribution:
        """``encode_window``'s distribution on the transformer's device, in float32: diffusers' distribution draws
        its noise in its parameters' dtype, which for a bf16 VAE would quantize the latents training draws in
        float32. Under context parallelism the process that holds the VAE (rank 0) encodes and every rank receives
        its parameters, so all draw the same latents. The last ``unencoded_frames`` latent frames
        (``unencoded_latent_frames``) are not encoded: their mean and log-variance are zeros, so the draw takes as
        much of the generator as a whole encode's and every other latent is the same."""
        device = self.device
        encoded = clip[: len(clip) - self.temporal_compression * unencoded_frames]
        if not is_context_parallel(self.transformer):
            parameters = self.encode_window(encoded).parameters.to(device, torch.float32)
        else:
            if self.decodes:
                parameters = self.encode_window(encoded).parameters.to(device).contiguous()
            else:
                latent_frames = (len(encoded) - 1) // self.temporal_compression + 1
                height, width = (size // self.vae_scale_factor_spatial for size in clip.shape[-2:])
                mean_and_log_variance = 2 * self.vae.config.latent_channels
                shape = (1, mean_and_log_variance, latent_frames, height, width)
                parameters = torch.empty(shape, device=device, dtype=self.vae.dtype)
            parameters = broadcast_from_main(parameters).float()
        frames_padding = (0, 0, 0, 0, 0, unencoded_frames)  # after the last latent frame (dim 2)
        return DiagonalGaussianDistribution(torch.nn.functional.pad(parameters, frames_padding))

    @torch.no_grad()
    def _stream(
        self,
        *,
        prompt: str,
        negative_prompt: str,
        clip: torch.Tensor,
        source: Callable[[int], Sequence],
        initial_control: str | None,
        schedule: GroupedInferenceSchedule,
        decoder: StreamingDecoder,
        group_size: int,
        guidance_scale: float,
        control_guidance_scale: float,
        generator: torch.Generator | None,
        max_groups: int | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        overlap_decode: bool,
    ) -> Iterator[StreamChunk]:
        start = time.perf_counter()
        decodes = self.decodes
        overlap_decode = overlap_decode or self.decodes_apart
        decode_device = self.vae.device
        decode_stream = torch.cuda.Stream(decode_device) if overlap_decode and decode_device.type == "cuda" else None
        device, dtype = self.device, self.transformer.dtype
        vocabulary = self.transformer.control_vocabulary
        compression = self.temporal_compression
        if prompt_embeds is None:
            prompt_embeds, negative_prompt_embeds = self.encode_text(prompt, negative_prompt)
        prompt_embeds, negative_prompt_embeds = (
            prompt_embeds.to(device, dtype),
            negative_prompt_embeds.to(device, dtype),
        )

        # Each inner step's per-frame timesteps [1, F], the same in every outer iteration: on the device once.
        frame_timesteps = [
            copy_to_device(expand_group_timesteps(schedule.window_timesteps(step), group_size)[None], device)
            for step in range(schedule.steps_per_band + 1)
        ]

        def denoise(latents: torch.Tensor, control_ids: torch.Tensor, step: int) -> torch.Tensor:
            """Inner step ``step`` of every frame of the window, from its timestep to the next step's."""
            now, after = frame_timesteps[step], frame_timesteps[step + 1]
            velocity = self.guided_velocity(
                latents.to(dtype),
                now,
                prompt_embeds,
                negative_prompt_embeds,
                control_ids,
                guidance_scale,
                control_guidance_scale,
            )
            return schedule.step(velocity, latents, now, after)[0]

        def window_control_ids(condition_token: str, group_tokens: list[list[str]]) -> torch.Tensor:
            """LongTensor [1, 1 + G * W] on the CPU (the transformer checks them there, then copies them without
            waiting for the GPU): the condition frame's control, then each group's."""
            tokens = [condition_token] + [token for tokens in group_tokens for token in tokens]
            return torch.tensor([vocabulary.encode(tokens)])

        # 1. The clip's latents, drawn from the VAE's distribution as training draws them (float32
        # [1, H + 1 + G * W, C, h, w]), on the transformer's device with its generator wherever the VAE is;
        # [history, condition] primes the decoder, its frames are not shown. The frames of the groups that start
        # at pure noise are not encoded (a shorter first frame).
        unencoded = self.unencoded_latent_frames(schedule.pure_noise_groups() * group_size)
        latents = self.window_latent_distribution(clip, unencoded).sample(generator).permute(0, 2, 1, 3, 4)
        latents = latents * self.vae.config.scaling_factor
        history = history_latent_frames(self.vae)
        if decodes:
            _DecodedGroup(decoder, latents[:, : history + CONDITION_FRAMES], decode_stream)

        # 2. The first window, in distribution: the condition clean, group g noised to the top of band g.
        group_tokens = [
            self._group_controls(source, group, group_size, vocabulary) for group in range(schedule.num_groups)
        ]
        condition_token = initial_control or group_tokens[0][0]
        window = latents[:, history:]
        noise = randn_tensor(window.shape, generator=generator, device=device, dtype=torch.float32)
        latents = schedule.start_window(window, noise, group_size)
        group_shape = (1, group_size, *latents.shape[2:])
        control_ids = window_control_ids(condition_token, group_tokens)

        group_index = 0
        decoding: tuple[_DecodedGroup, list[str], int] | None = None  # overlap: the group on the decode stream
        while True:
            # 3. One outer iteration: every group moves down one band; group 0 ends clean.
            for step in range(schedule.steps_per_band):
                latents = denoise(latents, control_ids, step)

            # 4. Emit group 0: at once, or (overlap) the previous group, decoded while this one's forwards ran. A
            # process that decodes nothing goes on to the next group's forwards.
            emitted = latents[:, CONDITION_FRAMES : CONDITION_FRAMES + group_size]
            state_nbytes = latents.numel() * latents.element_size() + decoder.state_nbytes()
            current = (
                (_DecodedGroup(decoder, emitted, decode_stream), list(group_tokens[0]), group_index)
                if decodes
                else None
            )
            ready, decoding = (decoding, current) if overlap_decode else (current, None)
            group_index += 1
            last = max_groups is not None and group_index >= max_groups
            for group in (ready, decoding if last else None):
                if group is not None:
                    decoded, tokens, index = group
                    frames, emitted_latents = decoded.result()
                    yield StreamChunk(
                        frames=frames,
                        controls=tokens,
                        frame_controls=[token for token in tokens for _ in range(compression)],
                        latents=emitted_latents,
                        group_index=index,
                        elapsed_s=time.perf_counter() - start,
                        state_nbytes=state_nbytes,
                    )
            if last:
                return

            # 5. Shift: the emitted group's last frame (and its control) conditions the window; noise enters
            # last with the controls asked for now, after the player has seen the emitted frames.
            condition = latents[:, CONDITION_FRAMES + group_size - 1 : CONDITION_FRAMES + group_size].clone()
            condition_token = group_tokens[0][-1]
            entering = group_index + schedule.num_groups - 1
            group_tokens = group_tokens[1:] + [self._group_controls(source, entering, group_size, vocabulary)]
            noise = randn_tensor(group_shape, generator=generator, device=device, dtype=torch.float32)
            latents = torch.cat([condition, latents[:, CONDITION_FRAMES + group_size :], noise], dim=1)
            control_ids = window_control_ids(condition_token, group_tokens)

    @staticmethod
    def _group_controls(
        source: Callable[[int], Sequence], group: int, group_size: int, vocabulary: ControlVocabulary
    ) -> list[str]:
        """Group ``group``'s W tokens from ``source``, checked against the vocabulary."""
        try:
            value = source(group)
            tokens = vocabulary.parse(value) if isinstance(value, str) else list(value)
            vocabulary.encode(tokens)
        except ControlError as error:
            raise ControlError(f"controls for group {group}: {error}") from None
        if len(tokens) != group_size:
            raise ControlError(
                f"controls for group {group}: got {len(tokens)} tokens {tokens}, need group_size={group_size}"
            )
        return tokens


class _DecodedGroup:
    """The decode of one emitted group ``[1, W, C, h, w]`` on the VAE's device, started at construction: inline,
    or on ``decode_stream`` (a CUDA stream of the VAE's device) after the work queued so far on the latents'
    device, to overlap what is queued next. ``result()`` waits for it: ``(frames [c * W, 3, H, W] float32 in
    [-1, 1], clamped on the VAE's device rather than by the host between groups, latents [W, C, h, w])``, both on
    the CPU.

    Every call of one stream's decoder runs on the same CUDA stream, so the decoder's caches are only ever used
    where they were made. On the same device, the window's latents, made on the current stream, are recorded as
    in use on the decode stream until it has read them. On another device, the copy runs on the latents' device's
    current stream after the forwards that made them, and the decode stream waits for it (torch orders a copy
    between devices on both devices' current streams), so the latents are read there before they are reused.
    """

    def __init__(self, decoder: StreamingDecoder, latents: torch.Tensor, decode_stream: torch.cuda.Stream | None):
        decode_device = decoder.vae.device
        if decode_stream is None:
            self._frames = decoder.decode(latents.to(decode_device))[0].clamp(-1, 1).to("cpu", torch.float32)
            self._latents = latents[0].to("cpu", copy=True)
            self._done = None
            return
        decode_stream.wait_stream(torch.cuda.current_stream(latents.device))
        if latents.device == decode_device:
            latents.record_stream(decode_stream)
        with torch.cuda.device(decode_device), torch.cuda.stream(decode_stream):
            latents = latents.to(decode_device, non_blocking=True)
            self._frames = _to_pinned_cpu(decoder.decode(latents)[0].clamp(-1, 1).float())
            self._latents = _to_pinned_cpu(latents[0])
            self._done = torch.cuda.Event()
            self._done.record(decode_stream)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._done is not None:
            self._done.synchronize()
        return self._frames, self._latents


def _to_pinned_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """An asynchronous copy into page-locked memory: from pageable memory the host would wait for the copy."""
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)
