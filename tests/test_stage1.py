"""Stage 1 end to end on the tiny model: learning, exact resume, accumulation, LoRA fuse, inference."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil

import pytest
import torch
from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel
from safetensors.torch import load_file

from stage1 import fuse_lora_weights, inference
from stage1.cogvideox.pipeline_cogvideox import GameVideoPipeline
from stage1.train_text_to_video_lora import LoraTrainer
from stage1.training.arguments import LoraArgs
from tests.conftest import (
    ADAM_ROUNDING_STEPS,
    TINY_HEIGHT,
    TINY_WIDTH,
    assert_components_unchanged,
    tiny_run_args,
    whole_and_resumed,
)
from thematrix.config import ConfigError
from thematrix.data.dataset import collate_batch
from thematrix.model_dir import (
    DEFAULT_TEXT_GUIDANCE,
    LORA_WEIGHT_NAME,
    NO_TEXT_GUIDANCE,
    ModelDirError,
    generation_defaults,
)
from thematrix.training.checkpoint import TRAINABLE_WEIGHTS, list_checkpoints
from thematrix.video import read_video_info

# alpha != rank, so that a LoRA loaded with the wrong scale (alpha / rank = 1) shows.
RANK, ALPHA = 4, 8.0


def tiny_args(model_dir, dataset, output_dir, **overrides) -> LoraArgs:
    return tiny_run_args(LoraArgs(), model_dir, dataset, output_dir, **{"rank": RANK, "lora_alpha": ALPHA, **overrides})


def lora_weights(output_dir) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / LORA_WEIGHT_NAME))


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tiny_dataset, tmp_path_factory):
    """A LoRA trained for 30 steps, with the loss on fixed noise measured before and after."""
    output_dir = tmp_path_factory.mktemp("stage1") / "lora"
    args = tiny_args(
        tiny_model_dir,
        tiny_dataset,
        output_dir,
        max_train_steps=30,
        validation_steps=30,
        validation_num_frames=9,
        validation_num_inference_steps=2,
        learning_rate=3e-2,
    )
    trainer = LoraTrainer(args)
    trainer.setup()
    batch = collate_batch([trainer.dataset[index] for index in range(len(trainer.dataset))])
    held_out = [10**6 + 10 * draw for draw in range(4)]  # noise no training step draws

    def held_out_loss() -> float:
        with torch.no_grad():
            return sum(trainer.compute_loss(batch, position).item() for position in held_out)

    before = held_out_loss()
    trainer.train()
    after = held_out_loss()
    return output_dir, before, after, trainer


def test_tiny_overfit_lowers_the_loss(trained):
    _, before, after, _ = trained
    # Untrained LoRA leaves the ratio at exactly 1; rank-4 attention LoRA on a random tiny model gets ~0.8.
    assert after < 0.88 * before, (before, after)


def test_training_writes_validation_video_and_checkpoint(trained):
    output_dir, _, _, _ = trained
    frames, _, height, width = read_video_info(output_dir / "validation" / "step-30" / "prompt-0.mp4")
    assert (frames, height, width) == (9, TINY_HEIGHT, TINY_WIDTH)
    assert [path.name for path in list_checkpoints(output_dir / "checkpoints")] == ["checkpoint-30"]
    assert json.loads((output_dir / "config.json").read_text())["rank"] == 4


def test_saved_lora_loads_into_stock_pipeline_and_changes_it(trained, tiny_model_dir):
    output_dir, _, _, _ = trained
    pipeline = CogVideoXPipeline.from_pretrained(str(tiny_model_dir))
    inputs = transformer_inputs(pipeline.transformer)
    base = pipeline.transformer(**inputs).sample
    pipeline.load_lora_weights(str(output_dir))
    adapted = pipeline.transformer(**inputs).sample
    assert (adapted - base).abs().max() > 1e-3


def transformer_inputs(transformer: CogVideoXTransformer3DModel) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    config = transformer.config
    return dict(
        hidden_states=torch.randn(1, 3, config.in_channels, 6, 8, generator=generator),
        encoder_hidden_states=torch.randn(1, config.max_text_seq_length, config.text_embed_dim, generator=generator),
        timestep=torch.tensor([500]),
    )


def test_fused_and_loaded_lora_equal_the_trained_peft_model(trained, tiny_model_dir, tmp_path):
    """The saved LoRA carries its alpha: loading and fusing scale it by alpha / rank, as training did."""
    output_dir, _, _, trainer = trained
    live = trainer.accelerator.unwrap_model(trainer.transformer).eval()
    assert live.peft_config["default"].lora_alpha != live.peft_config["default"].r
    fused_dir = fuse_lora_weights.fuse_lora(tiny_model_dir, output_dir, tmp_path / "fused")
    assert type(CogVideoXPipeline.from_pretrained(str(fused_dir))) is CogVideoXPipeline  # a stock directory
    fused_model = CogVideoXTransformer3DModel.from_pretrained(str(fused_dir), subfolder="transformer")
    assert not any("lora" in name for name in fused_model.state_dict())
    pipeline = CogVideoXPipeline.from_pretrained(str(tiny_model_dir))
    inputs = transformer_inputs(live)
    with torch.no_grad():
        expected, base = live(**inputs).sample, pipeline.transformer(**inputs).sample
        pipeline.load_lora_weights(str(output_dir))
        loaded, fused = pipeline.transformer(**inputs).sample, fused_model(**inputs).sample
    assert (expected - base).abs().max() > 1e-3  # the LoRA changes the output, so a wrong scale would show
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loaded, expected, atol=1e-5, rtol=1e-4)


def test_fused_directory_keeps_the_base_components_as_they_were(trained, tiny_model_dir, tmp_path):
    """Only the transformer is rewritten (float32); the scheduler keeps its class, so stock sampling is unchanged."""
    output_dir, _, _, _ = trained
    fused_dir = fuse_lora_weights.fuse_lora(tiny_model_dir, output_dir, tmp_path / "fused")
    assert_components_unchanged(tiny_model_dir, fused_dir)
    base_pipeline, fused_pipeline = (
        CogVideoXPipeline.from_pretrained(str(path)) for path in (tiny_model_dir, fused_dir)
    )
    assert type(fused_pipeline.scheduler) is type(base_pipeline.scheduler)
    assert fused_pipeline.transformer.dtype == torch.float32


def test_inference_writes_playable_mp4(trained, tiny_model_dir, tmp_path):
    output_dir, _, _, _ = trained
    output = inference.main(
        [
            "--model_dir",
            str(tiny_model_dir),
            "--lora_dir",
            str(output_dir),
            "--num_inference_steps",
            "2",
            "--num_frames",
            "9",
            "--output",
            str(tmp_path / "video.mp4"),
        ]
    )
    assert read_video_info(output)[0] == 9 and read_video_info(output)[2:] == (TINY_HEIGHT, TINY_WIDTH)


def test_an_empty_prompt_is_kept_and_a_missing_one_is_refused_for_a_base_model(tiny_model_dir):
    """The base model records no prompt: no --prompt is an error, --prompt "" (the empty caption) is a prompt."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir")
    inference.add_clip_arguments(parser)
    args = parser.parse_args(["--model_dir", str(tiny_model_dir), "--prompt", ""])
    inference.check_clip_options(args, GameVideoPipeline)
    assert args.prompt == ""
    with pytest.raises(ConfigError, match="records no prompt"):
        inference.check_clip_options(parser.parse_args(["--model_dir", str(tiny_model_dir)]), GameVideoPipeline)


def test_inference_samples_at_the_guidance_the_model_records_unless_told(tiny_model_dir, tmp_path, monkeypatch):
    """A model whose run dropped every caption records no text guidance (1), which --guidance_scale overrides; a
    model that records none samples at CogVideoX's guidance."""
    recorded = tmp_path / "recorded"
    shutil.copytree(tiny_model_dir, recorded)
    record = dataclasses.replace(generation_defaults(recorded), prompt="", guidance_scale=NO_TEXT_GUIDANCE)
    record.save(recorded)
    scales = []

    def stop(self, *arguments, guidance_scale, **options):
        scales.append(guidance_scale)
        raise KeyboardInterrupt

    monkeypatch.setattr(GameVideoPipeline, "__call__", stop)
    for options in (
        ["--model_dir", str(recorded)],
        ["--model_dir", str(recorded), "--guidance_scale", "4"],
        ["--model_dir", str(tiny_model_dir), "--prompt", "a car"],
    ):
        with pytest.raises(KeyboardInterrupt):
            inference.main([*options, "--output", str(tmp_path / "video.mp4")])
    assert scales == [NO_TEXT_GUIDANCE, 4.0, DEFAULT_TEXT_GUIDANCE]


def test_resume_after_kill_equals_uninterrupted_run(tiny_model_dir, tiny_dataset, tmp_path):
    settings = dict(
        max_train_steps=6,
        checkpointing_steps=3,
        lr_scheduler="cosine",
        lr_warmup_steps=2,
        cache_dir=str(tmp_path / "cache"),
    )
    _, resumed = whole_and_resumed(
        LoraTrainer,
        lambda run: tiny_args(tiny_model_dir, tiny_dataset, tmp_path / run, **settings),
        kill_at=5,
        killed_leaves=["checkpoint-3"],
    )
    assert resumed.global_step == 6

    whole, again = lora_weights(tmp_path / "whole"), lora_weights(tmp_path / "killed")
    assert whole.keys() == again.keys()
    for name in whole:
        assert torch.equal(whole[name], again[name]), name
    whole_optimizer = torch.load(
        tmp_path / "whole" / "checkpoints" / "checkpoint-6" / "optimizer.bin", weights_only=False
    )
    again_optimizer = torch.load(
        tmp_path / "killed" / "checkpoints" / "checkpoint-6" / "optimizer.bin", weights_only=False
    )
    for key, state in whole_optimizer["state"].items():
        assert torch.equal(state["exp_avg_sq"], again_optimizer["state"][key]["exp_avg_sq"])


def test_partial_checkpoint_of_a_killed_save_is_ignored(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "checkpoint-3").mkdir(parents=True)
    (root / "checkpoint-10.partial").mkdir()
    (root / "checkpoint-20").mkdir()
    assert [path.name for path in list_checkpoints(root)] == ["checkpoint-3", "checkpoint-20"]


def test_accumulating_two_batches_of_one_equals_one_batch_of_two(tiny_model_dir, tiny_dataset, tmp_path):
    # Unshuffled, both runs see clips 0, 1 then 2, 3 and draw the same noise for each.
    common = dict(max_train_steps=2, learning_rate=1e-3, shuffle=False, cache_dir=str(tmp_path / "cache"))
    LoraTrainer(tiny_args(tiny_model_dir, tiny_dataset, tmp_path / "batch2", train_batch_size=2, **common)).train()
    LoraTrainer(
        tiny_args(tiny_model_dir, tiny_dataset, tmp_path / "accum2", gradient_accumulation_steps=2, **common)
    ).train()
    batch2, accum2 = lora_weights(tmp_path / "batch2"), lora_weights(tmp_path / "accum2")
    for name in batch2:
        torch.testing.assert_close(
            batch2[name], accum2[name], atol=ADAM_ROUNDING_STEPS * common["learning_rate"], rtol=0
        )
    trained_b = [name for name in batch2 if "lora_B" in name]
    assert any(batch2[name].abs().max() > 0 for name in trained_b)


def test_checkpoint_holds_only_trainable_weights(trained):
    output_dir, _, _, _ = trained
    names = load_file(str(output_dir / "checkpoints" / "checkpoint-30" / TRAINABLE_WEIGHTS)).keys()
    assert names and all("lora" in name for name in names)


def test_lora_only_directory_is_refused_as_base_model(trained, tiny_dataset, tmp_path):
    output_dir, _, _, _ = trained
    with pytest.raises(ModelDirError, match="Fuse them first"):
        LoraTrainer(tiny_args(output_dir, tiny_dataset, tmp_path / "out", max_train_steps=1)).train()


def test_index_without_usable_clips_fails_at_start(tiny_model_dir, tmp_path):
    (tmp_path / "index.json").write_text(
        json.dumps(
            {"list": [{"path": "missing.mp4", "caption": "x", "control_signal_seq": "RIGHT", "valid_frame_idx": 0}]}
        )
    )
    args = tiny_args(tiny_model_dir, (tmp_path, tmp_path / "index.json"), tmp_path / "out", max_train_steps=1)
    with pytest.raises(ConfigError, match="no usable sample"):
        LoraTrainer(args).train()


def test_frame_counts_the_vae_cannot_take_fail_at_start(tiny_model_dir, tiny_dataset, tmp_path):
    args = tiny_args(tiny_model_dir, tiny_dataset, tmp_path / "out", max_train_steps=1, frame_buckets=(16,))
    with pytest.raises(ConfigError, match="4k\\+1"):
        LoraTrainer(args).train()
