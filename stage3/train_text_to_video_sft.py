"""Stage 3: Swin-DPM, full-parameter fine-tuning on windows of staggered noise groups.

Run through train_text_to_video_sft.sh. Each clip of ``1 + c * (H + G * W)`` frames is encoded whole and
its first H latent frames dropped (``history_latent_frames``; they give the condition causal context, as
the stream's history does): what remains is one window, a clean condition latent frame, then G groups of
W latent frames, group g noised to a timestep in band g. The loss covers the noisy frames only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stage2.train_text_to_video_sft import InteractiveTrainer
from stage3.cogvideox.pipeline_cogvideox import (
    RECIPE_GROUP_SIZE,
    RECIPE_NUM_GROUPS,
    SwinDPMPipeline,
    condition_control,
    history_latent_frames,
    window_clip_frames,
)
from stage3.cogvideox.scheduler import CONDITION_FRAMES, SwinScheduler
from stage3.training.arguments import SwinArgs
from thematrix.cli import run
from thematrix.config import ConfigError
from thematrix.controls import cycle_controls
from thematrix.schedules import band_width, grouped_training_timesteps
from thematrix.video import pipeline_video_to_signed

DEFAULT_CONFIG = Path(__file__).parent / "training" / "sft_config.py"


class SwinTrainer(InteractiveTrainer):
    """Every transformer weight trains; timesteps are drawn per group; the condition frame stays clean."""

    args_class = SwinArgs
    pipeline_class = SwinDPMPipeline
    scheduler_class = SwinScheduler

    def check_settings(self) -> None:
        """The window first (the input model's, else the settings', else the recipe's: G bands that split the
        training timesteps evenly) and the one clip length it needs, so that the clips are checked against it; then
        stage 2's checks."""
        args = self.args
        args.num_noise_groups = self.setting_from_model("num_noise_groups", "num_groups") or RECIPE_NUM_GROUPS
        args.group_size = self.setting_from_model("group_size", "group_size") or RECIPE_GROUP_SIZE
        try:
            band_width(args.num_noise_groups, self.scheduler.config.num_train_timesteps)
        except ValueError as error:
            raise ConfigError(f"args.num_noise_groups = {args.num_noise_groups}: {error}") from None
        window_frames = window_clip_frames(self.vae_layout, args.num_noise_groups, args.group_size)
        args.frame_buckets = args.frame_buckets or (window_frames,)
        if tuple(args.frame_buckets) != (window_frames,):
            raise ConfigError(
                f"args.frame_buckets is {tuple(args.frame_buckets)}, but a window of 1 + {args.num_noise_groups} x "
                f"{args.group_size} latent frames after {history_latent_frames(self.vae_layout)} history latent frames "
                f"needs clips of exactly {window_frames} frames: set args.frame_buckets = ({window_frames},), or leave "
                "it unset"
            )
        args.check()  # what depends on the window
        super().check_settings()

    def build_transformer(self) -> torch.nn.Module:
        transformer = self.load_interactive_transformer()
        transformer.requires_grad_(True)
        return transformer

    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        """The window's latent distribution: the clip's, without its first H (history) latent frames."""
        return super().encode_videos(videos)[:, :, history_latent_frames(self.vae) :]

    def cache_fingerprint(self) -> dict:
        return dict(super().cache_fingerprint(), history_latent_frames=history_latent_frames(self.vae))

    def sample_timesteps(self, num_latent_frames: int, generator: torch.Generator) -> torch.Tensor:
        """One window's timesteps, LongTensor [1, 1 + G * W]: 0 for the condition frame, then u + g * T/G for every
        frame of group g, one u ~ U{0, ..., T/G - 1} per window (every clip is one window: check_settings)."""
        args = self.args
        return grouped_training_timesteps(
            1, args.num_noise_groups, args.group_size, self.scheduler.config.num_train_timesteps, generator
        )

    def noisy_latents(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Every group noised to its timestep; the condition frame stays clean."""
        noisy = super().noisy_latents(latents, noise, timesteps)
        noisy[:, :CONDITION_FRAMES] = latents[:, :CONDITION_FRAMES]
        return noisy

    def model_kwargs(self, batch, generators):
        """Stage 2's controls, without the history latent frames' (the latents have none)."""
        kwargs = super().model_kwargs(batch, generators)
        return dict(kwargs, controls=kwargs["controls"][:, history_latent_frames(self.vae) :])

    def loss_mask(self, latents: torch.Tensor) -> torch.Tensor:
        """The noisy frames count; the clean condition frame does not."""
        mask = torch.ones(latents.shape[:2], device=latents.device)
        mask[:, :CONDITION_FRAMES] = 0
        return mask

    def validation_videos(self):
        """A stream longer than the training window, started from the first training clip."""
        pipeline = self.make_pipeline()
        args = self.args
        first = self.clips[0]

        def next_controls(group: int) -> list[str]:
            """The validation pattern, continued group after group."""
            start = group * args.group_size
            return cycle_controls(args.validation_controls, start + args.group_size)[start:]

        for name, sampling in self.validation_requests():
            output = pipeline.generate(
                "",
                first["video"],
                next_controls,
                args.validation_groups,
                num_groups=args.num_noise_groups,
                group_size=args.group_size,
                initial_control=condition_control(first["control_tokens"], self.vae),
                control_guidance_scale=args.validation_control_guidance_scale,
                output_type="pt",
                **sampling,
            )
            yield name, pipeline_video_to_signed(output.frames[0]), output.frame_controls[0]


def main(argv=None) -> Path:
    return SwinTrainer.main(DEFAULT_CONFIG, argv)


if __name__ == "__main__":
    run(main)
