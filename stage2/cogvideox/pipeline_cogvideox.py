"""Stage 2's pipeline: text plus one control token per latent frame to video, with control guidance.

Guidance combines three predictions, with w = ``guidance_scale`` and c = ``control_guidance_scale``::

    v = v(empty text, null controls)
        + w * (v(text, null controls) - v(empty text, null controls))
        + c * (v(text, controls)      - v(text, null controls))

that is ``(1 - w) v(empty, null) + (w - c) v(text, null) + c v(text, controls)``. Only the predictions
with a non-zero coefficient are computed, in one batched forward: w = c = 1 needs one (no guidance),
w = c (text and controls guided together) or w = 1 two, anything else three (the default w = 6, c = 1).
Later stages reuse ``guided_velocity`` inside their own sampling loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.pipelines.cogvideo.pipeline_output import CogVideoXPipelineOutput

from stage1.cogvideox.pipeline_cogvideox import GameVideoPipeline
from stage2.cogvideox.scheduler import InteractiveScheduler
from thematrix.controls import ControlError, ControlVocabulary, latent_frame_controls

# Imported so diffusers can resolve the transformer class that stage 2+ model directories name.
from thematrix.models import InteractiveCogVideoXTransformer3DModel


def latent_frame_count(num_frames: int, temporal_compression: int) -> int:
    if (num_frames - 1) % temporal_compression:
        raise ValueError(f"num_frames must be {temporal_compression}k+1, got {num_frames}")
    return (num_frames - 1) // temporal_compression + 1


def is_batch_of_controls(controls: str | Sequence[str] | Sequence[Sequence[str]]) -> bool:
    """Whether ``controls`` holds several videos' controls (sequences of tokens), not one video's."""
    return not isinstance(controls, str) and len(controls) > 0 and not isinstance(controls[0], str)


def parse_controls(
    controls: str | Sequence[str],
    vocabulary: ControlVocabulary,
    num_latent_frames: int,
    temporal_compression: int,
    per_video_frame: bool = False,
) -> list[str]:
    """Tokens per latent frame from ``"W,W,JUMP"`` or a token list; per video frame with ``per_video_frame``."""
    tokens = vocabulary.parse(controls) if isinstance(controls, str) else list(controls)
    vocabulary.encode(tokens)
    if per_video_frame:
        expected = (num_latent_frames - 1) * temporal_compression + 1
        if len(tokens) != expected:
            raise ControlError(
                f"{len(tokens)} per-video-frame controls for {expected} video frames; give exactly {expected} "
                f"(or {num_latent_frames}, one per latent frame, without the per-video-frame flag)"
            )
        return latent_frame_controls(tokens, temporal_compression)
    if len(tokens) != num_latent_frames:
        raise ControlError(
            f"{len(tokens)} controls for {num_latent_frames} latent frames; give exactly {num_latent_frames} "
            f"(one per {temporal_compression} video frames), or one per video frame with the per-video-frame flag"
        )
    return tokens


@dataclass
class InteractivePipelineOutput(CogVideoXPipelineOutput):
    """``CogVideoXPipelineOutput`` plus ``controls``: per video, the control token of each of its latent frames."""

    controls: list[list[str]]


class InteractivePipeline(GameVideoPipeline):
    """CogVideoX steered by controls; the transformer is an ``InteractiveCogVideoXTransformer3DModel``."""

    scheduler_class = InteractiveScheduler
    transformer_class = InteractiveCogVideoXTransformer3DModel

    @property
    def temporal_compression(self) -> int:
        return self.vae.config.temporal_compression_ratio

    def guided_velocity(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor,
        controls: torch.Tensor,
        guidance_scale: float,
        control_guidance_scale: float,
    ) -> torch.Tensor:
        """Guided transformer output for latents ``[B, F, C, h, w]``, timesteps ``[B]`` or ``[B, F]``, controls ``[B, F]``.

        The module docstring's formula, one forward over the branches whose coefficient is not zero.
        """
        null = torch.full_like(controls, self.transformer.control_vocabulary.null_id)
        branches = [
            (1 - guidance_scale, negative_prompt_embeds, null),
            (guidance_scale - control_guidance_scale, prompt_embeds, null),
            (control_guidance_scale, prompt_embeds, controls),
        ]
        branches = [branch for branch in branches if branch[0] != 0]  # the coefficients sum to 1: never empty
        count = len(branches)
        output = self.transformer(
            hidden_states=latents.repeat(count, 1, 1, 1, 1),
            encoder_hidden_states=torch.cat([embeds for _, embeds, _ in branches]),
            timestep=timesteps.repeat(count, *([1] * (timesteps.ndim - 1))),
            controls=torch.cat([ids for _, _, ids in branches]),
            return_dict=False,
        )[0].float()
        return sum(coefficient * prediction for (coefficient, _, _), prediction in zip(branches, output.chunk(count)))

    def encode_text(self, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        prompt_embeds, negative_embeds = self.encode_prompt(
            prompt, negative_prompt, do_classifier_free_guidance=True, device=self.device, dtype=self.transformer.dtype
        )
        return prompt_embeds, negative_embeds

    @torch.no_grad()
    def __call__(
        self,
        prompt: str = "",
        controls: str | Sequence[str] | Sequence[Sequence[str]] = (),
        negative_prompt: str = "",
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 6.0,
        control_guidance_scale: float = 1.0,
        per_video_frame_controls: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> InteractivePipelineOutput | tuple:
        """A video steered by ``controls``, or one video per entry of a list of them (a batch under one prompt, each
        video's noise from its own entry of a ``generator`` list, as it would be alone); returns, as
        ``CogVideoXPipeline``, an ``InteractivePipelineOutput`` whose ``frames`` are post-processed to
        ``output_type`` ("pil", "np", "pt" ``[B, F, C, H, W]`` in [0, 1], or "latent"), and the control token of each
        latent frame of each video; with ``return_dict=False``, (frames, controls)."""
        native_frames, native_height, native_width = self.native_size
        num_frames, height, width = num_frames or native_frames, height or native_height, width or native_width
        num_latent_frames = latent_frame_count(num_frames, self.temporal_compression)
        vocabulary = self.transformer.control_vocabulary
        batch = controls if is_batch_of_controls(controls) else [controls]
        if isinstance(generator, list) and len(generator) != len(batch):
            raise ValueError(f"{len(generator)} generators for {len(batch)} videos' controls: give one per video")
        tokens = [
            parse_controls(video, vocabulary, num_latent_frames, self.temporal_compression, per_video_frame_controls)
            for video in batch
        ]
        device = self.device
        control_ids = torch.tensor([vocabulary.encode(video) for video in tokens], device=device)
        if prompt_embeds is None:
            prompt_embeds, negative_prompt_embeds = self.encode_text(prompt, negative_prompt)
        prompt_embeds, negative_prompt_embeds = (
            embeds.expand(len(batch), -1, -1) for embeds in (prompt_embeds, negative_prompt_embeds)
        )

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.prepare_latents(
            len(batch),
            self.transformer.config.in_channels,
            num_frames,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
        )
        previous_x0 = None
        timesteps = self.scheduler.timesteps
        for index, timestep in enumerate(self.progress_bar(timesteps)):
            velocity = self.guided_velocity(
                latents,
                timestep.expand(len(batch)),
                prompt_embeds,
                negative_prompt_embeds,
                control_ids,
                guidance_scale,
                control_guidance_scale,
            )
            latents, previous_x0 = self.scheduler.step(
                velocity,
                previous_x0,
                timestep,
                timesteps[index - 1] if index > 0 else None,
                latents,
                generator=generator,
                return_dict=False,
            )
            latents = latents.to(prompt_embeds.dtype)
        if output_type == "latent":
            video = latents
        else:
            video = self.video_processor.postprocess_video(video=self.decode_latents(latents), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return video, tokens
        return InteractivePipelineOutput(frames=video, controls=tokens)
