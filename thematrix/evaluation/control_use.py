"""Whether a model uses its control input at all: its denoising error on real clips with the clips' own keys,
the null key, and another clip's keys, at each noise level.

No IDM and no sampling: a forward per clip, key set and noise level. A model that ignores its keys scores the
three alike; one that follows them is best with the clips' own keys and worst with another clip's, at the noise
levels where the frames do not yet show the motion. Generated videos can still fail to show what the model
uses (the IDM's measures say whether they do); this says where to look when they fail.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import torch

from stage2.cogvideox.pipeline_cogvideox import InteractivePipeline
from thematrix.config import ConfigError, setting_from_model
from thematrix.data.dataset import VideoDataset
from thematrix.data.index import load_index
from thematrix.evaluation.evaluate import default_device
from thematrix.model_dir import generation_defaults
from thematrix.schedules import CogVideoXTrainingSchedule

DEFAULT_TIMESTEPS = (50, 250, 500, 750, 950)
KEY_SETS = ("own keys", "null key", "another clip's keys")
# A key set mixed from each frame's own token and the other clip's token at that frame, e.g. a game's steering
# from one and its pedal from the other: tells which part of a key the model uses.
MixKeys = Callable[[str, str], str]


def real_latents(
    pipeline: InteractivePipeline,
    model_dir: str | Path,
    data_root: str | Path,
    index_file: str | Path,
    num_clips: int,
    seed: int,
    fps: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled latents ``[n, F, C, h, w]`` of ``num_clips`` clips drawn with ``seed``, and their keys ``[n, F]``,
    read as the model was trained (its recorded frame rate, size and clip length; ``fps`` for a model that records
    none)."""
    recorded = generation_defaults(model_dir)
    fps = setting_from_model("--fps", fps, recorded.fps, f"the model at {model_dir}")
    if fps is None:
        raise ConfigError(f"--fps: the model at {model_dir} records no training frame rate; pass the one it trained at")
    vocabulary = pipeline.transformer.control_vocabulary
    samples, problems = load_index(index_file, data_root, vocabulary)
    if len(samples) < 2:
        raise ValueError(f"{index_file}: {len(samples)} usable clips, at least 2 needed ({problems[:3]})")
    dataset = VideoDataset(
        samples,
        fps=fps,
        height=recorded.height,
        width=recorded.width,
        frame_buckets=(recorded.num_frames,),
        temporal_compression=pipeline.vae.config.temporal_compression_ratio,
        vocabulary=vocabulary,
    )
    chosen = random.Random(seed).sample(range(len(dataset)), min(num_clips, len(dataset)))
    items = [dataset[index] for index in chosen]
    latents = []
    for item in items:  # one clip at a time: at the 2B model's size a batch of clips does not fit the VAE
        video = item["video"][None].to(pipeline.device, pipeline.vae.dtype).permute(0, 2, 1, 3, 4)
        with torch.no_grad():
            latents.append(pipeline.vae.encode(video).latent_dist.mean.permute(0, 2, 1, 3, 4).float())
    scaled = torch.cat(latents) * pipeline.vae.config.scaling_factor
    return scaled, torch.stack([item["controls"] for item in items]).to(pipeline.device)


@torch.no_grad()
def control_use(
    model_dir: str | Path,
    data_root: str | Path,
    index_file: str | Path,
    *,
    num_clips: int,
    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS,
    seed: int = 0,
    fps: float | None = None,
    batch_size: int = 4,
    mixed_key_sets: dict[str, MixKeys] | None = None,
) -> dict:
    """Mean squared error of the predicted clean latents at each timestep, for each key set of ``KEY_SETS`` and of
    ``mixed_key_sets`` (name -> token from (own token, other clip's token)); ``batch_size`` clips per forward."""
    device = default_device()
    pipeline = InteractivePipeline.from_model_dir(
        model_dir, device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32
    )
    latents, own = real_latents(pipeline, model_dir, data_root, index_file, num_clips, seed, fps)
    count = len(latents)
    prompt_embeds = pipeline.encode_prompt([""] * count, do_classifier_free_guidance=False, device=device)[0]
    vocabulary = pipeline.transformer.control_vocabulary
    other = own.roll(1, dims=0)
    keys = dict(zip(KEY_SETS, (own, torch.full_like(own, vocabulary.null_id), other), strict=True))
    for name, mix in (mixed_key_sets or {}).items():
        tokens = [
            [mix(vocabulary.tokens[a], vocabulary.tokens[b]) for a, b in zip(own_row, other_row, strict=True)]
            for own_row, other_row in zip(own.tolist(), other.tolist(), strict=True)
        ]
        keys[name] = torch.tensor([vocabulary.encode(row) for row in tokens], device=device)
    schedule = CogVideoXTrainingSchedule(pipeline.scheduler)
    generator = torch.Generator(device).manual_seed(seed)
    errors = {name: [] for name in keys}
    for timestep in timesteps:
        steps = torch.full((count,), timestep, device=device)
        noise = torch.randn(latents.shape, generator=generator, device=device)
        noisy = schedule.add_noise(latents, noise, steps)
        for name, controls in keys.items():
            velocity = torch.cat(
                [
                    pipeline.transformer(
                        hidden_states=noisy[batch].to(pipeline.transformer.dtype),
                        encoder_hidden_states=prompt_embeds[batch],
                        timestep=steps[batch],
                        controls=controls[batch],
                        return_dict=False,
                    )[0].float()
                    for batch in (slice(first, first + batch_size) for first in range(0, count, batch_size))
                ]
            )
            predicted = schedule.velocity_to_sample(velocity, noisy, steps)
            errors[name].append(((predicted - latents) ** 2).mean().item())
    return {"clips": count, "timesteps": list(timesteps), "x0_mse": errors}
