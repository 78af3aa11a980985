"""Stage 3 training on the tiny model: grouped per-frame noise, clean condition frame, full fine-tuning."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from stage3.cogvideox.pipeline_cogvideox import history_latent_frames
from stage3.train_text_to_video_sft import SwinTrainer
from stage3.training.arguments import SwinArgs
from tests.conftest import (
    CLIP_FRAMES,
    TINY_HEIGHT,
    TINY_WIDTH,
    assert_components_unchanged,
    moving_square_clip,
    tiny_run_args,
)
from thematrix.config import ConfigError
from thematrix.schedules import grouped_training_timesteps
from thematrix.training import trainer as trainer_module

# 2 history + 1 + 2 * 2 latent frames = the 25-frame test clips
NUM_GROUPS, GROUP_SIZE = 2, 2


def stage3_args(model_dir, dataset, output_dir, **overrides) -> SwinArgs:
    settings = {
        "num_noise_groups": NUM_GROUPS,
        "group_size": GROUP_SIZE,
        "max_train_steps": 4,
        "frame_buckets": (CLIP_FRAMES,),
        "learning_rate": 1e-3,
        "validation_num_inference_steps": 2,
        **overrides,
    }
    return tiny_run_args(SwinArgs(), model_dir, dataset, output_dir, **settings)


@pytest.fixture(scope="module")
def trainer(tiny_model_dir, tiny_dataset, tmp_path_factory):
    trainer = SwinTrainer(stage3_args(tiny_model_dir, tiny_dataset, tmp_path_factory.mktemp("stage3")))
    trainer.setup()
    return trainer


def test_window_timesteps_are_grouped_and_condition_frame_stays_clean(trainer):
    generator = torch.Generator().manual_seed(0)
    timesteps = trainer.sample_timesteps(1 + NUM_GROUPS * GROUP_SIZE, generator)
    num_train_timesteps = trainer.scheduler.config.num_train_timesteps
    expected = grouped_training_timesteps(
        1, NUM_GROUPS, GROUP_SIZE, num_train_timesteps, torch.Generator().manual_seed(0)
    )
    assert torch.equal(timesteps, expected) and timesteps.dtype == torch.long
    band = trainer.scheduler.config.num_train_timesteps // NUM_GROUPS
    assert timesteps.shape == (1, 5) and timesteps[0, 0] == 0
    assert torch.equal(timesteps[0, 3:] - timesteps[0, 1:3], torch.full((2,), band))
    latents, noise = torch.randn(1, 5, 4, 6, 8), torch.randn(1, 5, 4, 6, 8)
    noisy = trainer.noisy_latents(latents, noise, timesteps)
    assert torch.equal(noisy[:, 0], latents[:, 0]) and not torch.equal(noisy[:, 1:], latents[:, 1:])
    assert trainer.loss_mask(latents).tolist() == [[0, 1, 1, 1, 1]]


def test_training_condition_latent_is_the_one_the_stream_conditions_on(trainer, pipeline, monkeypatch):
    """Same frames, same latent: the window's condition is a 4-frame latent with causal context, in training and in
    the stream (with the VAE's distribution collapsed to its mean, the latent each samples from)."""
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean)
    video = (
        torch.from_numpy(moving_square_clip(1, CLIP_FRAMES + 8, TINY_HEIGHT, TINY_WIDTH)).permute(0, 3, 1, 2) / 127.5
        - 1
    )
    conditions = []
    handle = pipeline.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: conditions.append(kwargs["hidden_states"][0, 0].clone()), with_kwargs=True
    )
    try:
        next(
            pipeline.stream(
                "", video, "RIGHT", num_groups=NUM_GROUPS, group_size=GROUP_SIZE, num_inference_steps=NUM_GROUPS
            )
        )
    finally:
        handle.remove()
    # Training sees the stream's last clip-length frames as one clip.
    mean = trainer.encode_videos(video[-CLIP_FRAMES:][None]).chunk(2, dim=1)[0]  # [1, C, 1 + G * W, h, w]
    assert mean.shape[2] == 1 + NUM_GROUPS * GROUP_SIZE
    torch.testing.assert_close(conditions[0], mean[0, :, 0] * trainer.vae.config.scaling_factor, rtol=0, atol=1e-5)
    assert history_latent_frames(trainer.vae) == 2  # latent 2 of the clip's encode: not the causal first frame


def test_training_drops_the_history_latents_and_their_controls(trainer):
    item = trainer.dataset[0]
    history = history_latent_frames(trainer.vae)
    assert item["latent_parameters"].shape[1] == 1 + NUM_GROUPS * GROUP_SIZE and len(item["controls"]) == history + 5
    batch = {"controls": item["controls"][None]}
    controls = trainer.model_kwargs(batch, [torch.Generator().manual_seed(5)])["controls"]  # not dropped with this seed
    assert torch.equal(controls, item["controls"][None, history:])


def test_loss_ignores_the_condition_frame(trainer):
    batch = {key: value for key, value in trainer.dataset[0].items()}
    batch = {key: value[None] if isinstance(value, torch.Tensor) else [value] for key, value in batch.items()}
    with torch.no_grad():
        loss = trainer.compute_loss(batch, 7)
        original_predict = trainer.schedule.velocity_to_sample

        def wrong_condition_frame(prediction, noisy, timesteps):
            sample = original_predict(prediction, noisy, timesteps)
            sample[:, 0] += 100.0
            return sample

        trainer.schedule.velocity_to_sample = wrong_condition_frame
        try:
            assert trainer.compute_loss(batch, 7) == loss
        finally:
            trainer.schedule.velocity_to_sample = original_predict


def test_full_fine_tuning_moves_base_and_control_weights(trainer, tiny_model_dir):
    model = trainer.accelerator.unwrap_model(trainer.transformer)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    assert all(param.requires_grad for param in model.parameters())
    trainer.train()
    moved = {name for name, param in model.named_parameters() if not torch.equal(param, before[name])}
    assert any(name.startswith("transformer_blocks.") for name in moved)
    assert any(name.startswith("control_blocks.") for name in moved)
    assert (trainer.final_model_dir / "transformer" / "config.json").is_file()
    # The window is neither config nor state of the scheduler: the saved scheduler/ is the input model's, unchanged.
    assert_components_unchanged(tiny_model_dir, trainer.final_model_dir)


def test_timesteps_drawn_per_band_refuse_another_density(tiny_model_dir, tiny_dataset, tmp_path):
    args = stage3_args(tiny_model_dir, tiny_dataset, tmp_path, timestep_density_exponent=2.0)
    with pytest.raises(ConfigError, match="one timestep per noise band, uniformly within it: leave it at 1"):
        args.check()


def test_groups_that_do_not_split_the_timesteps_are_refused_before_anything_loads(
    tiny_model_dir, tiny_dataset, tmp_path, monkeypatch
):
    """3 groups do not split 1000 timesteps into equal bands: refused at start, naming the setting and its values."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was reported")

    monkeypatch.setattr(trainer_module, "load_components", refuse)
    args = stage3_args(
        tiny_model_dir,
        tiny_dataset,
        tmp_path,
        num_noise_groups=3,
        group_size=1,
        frame_buckets=None,
        validation_num_inference_steps=3,
    )
    with pytest.raises(ConfigError, match=r"args.num_noise_groups = 3: .* must divide 1000, e.g. one of \[1, 2, 4,"):
        SwinTrainer(args).setup()


def test_clip_length_must_fill_the_window(tiny_model_dir, tiny_dataset, tmp_path):
    args = stage3_args(
        tiny_model_dir, tiny_dataset, tmp_path, num_noise_groups=4, group_size=4, validation_num_inference_steps=4
    )
    with pytest.raises(ConfigError, match=r"needs clips of exactly 73 frames: set args.frame_buckets = \(73,\)"):
        SwinTrainer(args).train()
