"""Stage 3 training on the tiny model: grouped per-frame noise, clean condition frame, full fine-tuning."""

from __future__ import annotations

import pytest
import torch

from stage3.train_text_to_video_sft import SwinTrainer
from stage3.training.arguments import SwinArgs
from tests.conftest import tiny_run_args
from thematrix.config import ConfigError

NUM_GROUPS, GROUP_SIZE = 2, 2  # 1 + 2 * 2 latent frames = the 17-frame test clips


def stage3_args(model_dir, dataset, output_dir, **overrides) -> SwinArgs:
    settings = {"num_noise_groups": NUM_GROUPS, "group_size": GROUP_SIZE, "max_train_steps": 4,
                "learning_rate": 1e-3, "validation_num_inference_steps": 2, **overrides}
    return tiny_run_args(SwinArgs(), model_dir, dataset, output_dir, **settings)


@pytest.fixture(scope="module")
def trainer(tiny_model_dir, tiny_dataset, tmp_path_factory):
    trainer = SwinTrainer(stage3_args(tiny_model_dir, tiny_dataset, tmp_path_factory.mktemp("stage3")))
    trainer.setup()
    return trainer


def test_window_timesteps_are_grouped_and_condition_frame_stays_clean(trainer):
    generator = torch.Generator().manual_seed(0)
    timesteps = trainer.sample_timesteps(1 + NUM_GROUPS * GROUP_SIZE, generator)
    band = trainer.scheduler.config.num_train_timesteps // NUM_GROUPS
    assert timesteps.shape == (1, 5) and timesteps[0, 0] == 0
    assert torch.equal(timesteps[0, 3:] - timesteps[0, 1:3], torch.full((2,), band))
    latents, noise = torch.randn(1, 5, 4, 6, 8), torch.randn(1, 5, 4, 6, 8)
    noisy = trainer.noisy_latents(latents, noise, timesteps)
    assert torch.equal(noisy[:, 0], latents[:, 0]) and not torch.equal(noisy[:, 1:], latents[:, 1:])
    assert trainer.loss_mask(latents).tolist() == [[0, 1, 1, 1, 1]]


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


def test_full_fine_tuning_moves_base_and_control_weights(trainer):
    model = trainer.accelerator.unwrap_model(trainer.transformer)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    assert all(param.requires_grad for param in model.parameters())
    trainer.train()
    moved = {name for name, param in model.named_parameters() if not torch.equal(param, before[name])}
    assert any(name.startswith("transformer_blocks.") for name in moved)
    assert any(name.startswith("control_blocks.") for name in moved)
    assert (trainer.final_model_dir / "transformer" / "config.json").is_file()


def test_clip_length_must_fill_the_window(tiny_model_dir, tiny_dataset, tmp_path):
    args = stage3_args(tiny_model_dir, tiny_dataset, tmp_path, num_noise_groups=4, group_size=4)
    with pytest.raises(ConfigError, match=r"needs clips of exactly 65 frames: set args.frame_buckets = \(65,\)"):
        SwinTrainer(args).train()
