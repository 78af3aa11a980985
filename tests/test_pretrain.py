"""Pretraining the stand-in base model: presets that fit together, a VAE and a transformer that learn."""

from __future__ import annotations

import filecmp
import json

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
from safetensors.torch import load_file

from stage1.training.arguments import LoraArgs
from stage2.training.arguments import SftArgs
from stage3.cogvideox.pipeline_cogvideox import window_clip_frames
from stage3.training.arguments import SwinArgs
from stage4.training.arguments import ScmArgs
from tests.conftest import (
    CLIP_FPS,
    NUM_CLIPS,
    TINY_HEIGHT,
    TINY_WIDTH,
    moving_square_clip,
    tiny_run_args,
)
from thematrix.config import ConfigError, load_config
from thematrix.presets import PRESETS
from thematrix.pretrain.arguments import PretrainArgs, VaeArgs
from thematrix.pretrain.transformer import TextToVideoPretrainer
from thematrix.pretrain.vae import VaePretrainer, kl_per_element
from thematrix.training.metrics import METRICS_FILE, PLOT_FILE, read_records

UNCHANGED_COMPONENTS = ("tokenizer", "text_encoder", "transformer", "scheduler")
HELD_POSITIONS = range(0, 64, 4)  # sample positions whose draws cover the timesteps


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_components_fit_together(preset):
    config = PRESETS[preset]
    transformer, vae = config["transformer"], config["vae"]
    spatial = 2 ** (len(vae["block_out_channels"]) - 1)
    assert transformer["in_channels"] == transformer["out_channels"] == vae["latent_channels"]
    assert transformer["text_embed_dim"] == config["text_encoder"]["d_model"]
    assert (transformer["sample_height"] * spatial, transformer["sample_width"] * spatial) == (
        vae["sample_height"],
        vae["sample_width"],
    )
    assert (transformer["sample_frames"] - 1) % vae["temporal_compression_ratio"] == 0
    assert transformer["max_text_seq_length"] == config["tokenizer"]["model_max_length"]
    for channels in vae["block_out_channels"]:
        assert channels % vae["norm_num_groups"] == 0


def vae_args(tiny_model_dir, tiny_dataset, output_dir, **overrides) -> VaeArgs:
    data_root, index_file = tiny_dataset
    args = VaeArgs()
    args.pretrained_model_name_or_path, args.output_dir = str(tiny_model_dir), str(output_dir)
    args.data_root, args.index_file, args.fps = str(data_root), str(index_file), CLIP_FPS
    args.train_batch_size, args.dataloader_num_workers, args.scaling_clips = 2, 0, 4
    args.learning_rate, args.lr_warmup_steps, args.report_to = 3e-3, 0, "none"
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


def clip_video(index: int, num_frames: int) -> torch.Tensor:
    """The first frames of the tiny dataset's clip ``index`` as the VAE takes them: [3, F, H, W] in [-1, 1]."""
    frames = torch.from_numpy(moving_square_clip(index, num_frames, TINY_HEIGHT, TINY_WIDTH)).float()
    return (frames / 127.5 - 1).permute(3, 0, 1, 2)


def reconstruction_l1(vae: AutoencoderKLCogVideoX, video: torch.Tensor) -> float:
    with torch.no_grad():
        return (vae.decode(vae.encode(video).latent_dist.mode()).sample - video).abs().mean().item()


def test_vae_pretraining_learns_and_writes_a_model_with_its_latent_scale(tiny_model_dir, tiny_dataset, tmp_path):
    args = vae_args(tiny_model_dir, tiny_dataset, tmp_path / "vae", max_train_steps=40)
    video = clip_video(0, args.clip_frames)[None]
    before = reconstruction_l1(AutoencoderKLCogVideoX.from_pretrained(tiny_model_dir, subfolder="vae"), video)

    trainer = VaePretrainer(args)
    output = trainer.train()
    vae = AutoencoderKLCogVideoX.from_pretrained(output, subfolder="vae", dtype=torch.float32)

    assert reconstruction_l1(vae, video) < 0.5 * before
    assert len(trainer.history) == args.max_train_steps
    # Its per-step log is the stages' own: metrics.jsonl (every step's reconstruction error) and its plot.
    records = read_records(tmp_path / "vae" / METRICS_FILE)
    assert [record["step"] for record in records] == list(range(1, args.max_train_steps + 1))
    assert [record["reconstruction_l1"] for record in records] == [
        logs["reconstruction_l1"] for logs in trainer.history
    ]
    assert (tmp_path / "vae" / PLOT_FILE).stat().st_size > 0
    # The scale makes the latents of the footage (all its clips) unit-variance.
    scaling = vae.config.scaling_factor
    assert scaling != AutoencoderKLCogVideoX.from_pretrained(tiny_model_dir, subfolder="vae").config.scaling_factor
    clips = torch.stack([clip_video(index, args.clip_frames) for index in range(NUM_CLIPS)])
    with torch.no_grad():
        latents = vae.encode(clips).latent_dist.sample(torch.Generator().manual_seed(0)) * scaling
    assert 0.8 < latents.std().item() < 1.25
    weights = load_file(output / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(tensor.dtype == torch.bfloat16 for tensor in weights.values())
    # Everything but the VAE is the input directory's, file for file.
    for name in UNCHANGED_COMPONENTS:
        comparison = filecmp.dircmp(tiny_model_dir / name, output / name)
        assert not (comparison.diff_files or comparison.left_only or comparison.right_only), name
    index = json.loads((output / "model_index.json").read_text())
    assert index == json.loads((tiny_model_dir / "model_index.json").read_text())


def test_kl_per_element_is_zero_for_the_prior_and_positive_otherwise():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    prior = DiagonalGaussianDistribution(torch.zeros(1, 8, 2, 3, 3))
    shifted = DiagonalGaussianDistribution(torch.cat([torch.ones(1, 4, 2, 3, 3), torch.zeros(1, 4, 2, 3, 3)], dim=1))
    assert kl_per_element(prior).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_per_element(shifted).item() == pytest.approx(0.5)  # 0.5 * mean^2 with mean 1, var 1


def test_vae_settings_are_checked(tiny_model_dir, tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="args.clip_frames = 8"):
        VaePretrainer(vae_args(tiny_model_dir, tiny_dataset, tmp_path, clip_frames=8, max_train_steps=1)).train()
    with pytest.raises(ConfigError, match="save_dtype"):
        VaePretrainer(vae_args(tiny_model_dir, tiny_dataset, tmp_path, save_dtype="int8"))


def pretrain_args(tiny_model_dir, tiny_dataset, output_dir, **overrides) -> PretrainArgs:
    return tiny_run_args(PretrainArgs(), tiny_model_dir, tiny_dataset, output_dir, **overrides)


def held_loss(trainer: TextToVideoPretrainer, batch: dict) -> float:
    """The loss of ``batch`` at fixed draws (noise and timesteps of sample positions 0, 4, ..., 60)."""
    with torch.no_grad():
        return sum(trainer.compute_loss(batch, position).item() for position in HELD_POSITIONS) / len(HELD_POSITIONS)


def test_transformer_pretraining_starts_from_seeded_random_weights_and_fits_clips(
    tiny_model_dir, tiny_dataset, tmp_path
):
    args = pretrain_args(tiny_model_dir, tiny_dataset, tmp_path / "run", max_train_steps=40, train_batch_size=4)
    trainer = TextToVideoPretrainer(args)
    trainer.setup()
    start = {name: param.detach().clone() for name, param in trainer.transformer.named_parameters()}
    directory = CogVideoXTransformer3DModel.from_pretrained(tiny_model_dir, subfolder="transformer")
    assert not torch.equal(start["proj_out.weight"], directory.proj_out.weight)
    assert all(param.requires_grad for param in trainer.transformer.parameters())
    batch = next(iter(trainer.dataloader))
    before = held_loss(trainer, batch)
    trainer.train()
    assert held_loss(trainer, batch) < 0.85 * before  # the tiny model's loss floor is near 0.75 of its start

    again = TextToVideoPretrainer(pretrain_args(tiny_model_dir, tiny_dataset, tmp_path / "again"))
    again.setup()
    assert torch.equal(dict(again.transformer.named_parameters())["proj_out.weight"], start["proj_out.weight"])
    final = CogVideoXTransformer3DModel.from_pretrained(trainer.final_model_dir, subfolder="transformer")
    assert not torch.equal(final.proj_out.weight, start["proj_out.weight"])


def test_transformer_pretraining_continues_the_directory_weights_when_asked(tiny_model_dir, tiny_dataset, tmp_path):
    trainer = TextToVideoPretrainer(pretrain_args(tiny_model_dir, tiny_dataset, tmp_path, from_scratch=False))
    trainer.setup()
    directory = CogVideoXTransformer3DModel.from_pretrained(tiny_model_dir, subfolder="transformer")
    assert torch.equal(dict(trainer.transformer.named_parameters())["proj_out.weight"], directory.proj_out.weight)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("thematrix/pretrain/vae_config_mini.py", VaeArgs),
        ("thematrix/pretrain/transformer_config_mini.py", PretrainArgs),
    ],
)
def test_mini_pretraining_configs_load(path, expected):
    args = load_config(path, expected)
    args.check()


@pytest.mark.parametrize(
    "path, expected",
    [
        ("stage1/training/lora_config_mini.py", LoraArgs),
        ("stage2/training/sft_config_mini.py", SftArgs),
        ("stage3/training/sft_config_mini.py", SwinArgs),
        ("stage4/training/scm_config_mini.py", ScmArgs),
    ],
)
def test_mini_stage_configs_load_and_fit_the_mini_model(path, expected):
    args = load_config(path, expected)
    args.check()
    vae = PRESETS["mini"]["vae"]
    assert (args.height, args.width) == (vae["sample_height"], vae["sample_width"])
    if isinstance(args, SwinArgs):  # a window clip with its history
        window = window_clip_frames(AutoencoderKLCogVideoX(**vae), args.num_noise_groups, args.group_size)
        assert args.frame_buckets == (window,)
        steps = args.validation_num_inference_steps or args.num_noise_groups  # stage 4's default: one per group
        assert steps % args.num_noise_groups == 0
