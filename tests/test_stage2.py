"""Stage 2 on the tiny model: exact start from stage 1, only the Interactive Module trains, controls matter."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel, DiffusionPipeline
from safetensors.torch import load_file

from stage2 import inference
from stage2.cogvideox.pipeline_cogvideox import InteractivePipeline, InteractivePipelineOutput, parse_controls
from stage2.train_text_to_video_sft import InteractiveTrainer
from stage2.training.arguments import SftArgs
from tests.conftest import (
    CLIP_FPS,
    TEST_VOCABULARY,
    TINY_HEIGHT,
    TINY_WIDTH,
    TRAIN_FRAMES,
    assert_components_unchanged,
    tiny_run_args,
    whole_and_resumed,
)
from thematrix.config import ConfigError
from thematrix.controls import VOCABULARY_FILE, ControlError, load_vocabulary, video_frame_labels
from thematrix.model_dir import GENERATION_DEFAULTS_FILE, GenerationDefaults, save_model_dir
from thematrix.models import InteractiveCogVideoXTransformer3DModel, compute_control_embeddings
from thematrix.video import read_video_info


def stage2_args(model_dir, dataset, output_dir, **overrides) -> SftArgs:
    return tiny_run_args(SftArgs(), model_dir, dataset, output_dir, **{"max_train_steps": 20, **overrides})


def transformer_inputs(config, controls=None) -> dict:
    generator = torch.Generator().manual_seed(3)
    return dict(
        hidden_states=torch.randn(1, 5, config.in_channels, 6, 8, generator=generator),
        encoder_hidden_states=torch.randn(1, config.max_text_seq_length, config.text_embed_dim, generator=generator),
        timestep=torch.tensor([400]),
        **({} if controls is None else {"controls": torch.tensor([controls])}),
    )


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tiny_dataset, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("stage2") / "run"
    trainer = InteractiveTrainer(
        stage2_args(
            tiny_model_dir,
            tiny_dataset,
            output_dir,
            validation_steps=20,
            validation_num_frames=9,
            validation_num_inference_steps=2,
        )
    )
    trainer.setup()
    start = {name: value.detach().clone() for name, value in trainer.transformer.state_dict().items()}
    trainer.train()
    return trainer, start


def test_stage2_builds_its_module_on_the_stage1_weights_for_the_footages_vocabulary(
    tiny_model_dir, tiny_dataset, tmp_path
):
    """Every base weight is the stage-1 model's, and the control table embeds the footage's phrases with the model's
    own T5. (Its zero-initialised gates make step 0 exactly the stage-1 model: test_interactive_transformer.py.)"""
    trainer = InteractiveTrainer(stage2_args(tiny_model_dir, tiny_dataset, tmp_path))
    trainer.setup()
    interactive = trainer.accelerator.unwrap_model(trainer.transformer)
    assert interactive.control_vocabulary == load_vocabulary(tiny_dataset[0] / VOCABULARY_FILE) == TEST_VOCABULARY
    weights = interactive.state_dict()
    for name, value in (
        CogVideoXTransformer3DModel.from_pretrained(str(tiny_model_dir), subfolder="transformer").state_dict().items()
    ):
        assert torch.equal(weights[name], value), name
    table = compute_control_embeddings(TEST_VOCABULARY, trainer.tokenizer, trainer.text_encoder)
    assert torch.equal(interactive.control_embedding_table, table)


def test_only_the_interactive_module_moves(trained):
    trainer, start = trained
    model = trainer.accelerator.unwrap_model(trainer.transformer)
    control_names = {
        name for name, _ in model.named_parameters() if name.startswith(("control_proj.", "control_blocks."))
    }
    assert control_names
    for name, value in model.state_dict().items():
        if name in control_names:
            continue
        assert torch.equal(value.to(start[name].dtype), start[name]), f"frozen weight {name} changed"
    moved = [name for name in control_names if not torch.equal(model.state_dict()[name], start[name])]
    assert len(moved) > len(control_names) // 2


def test_train_base_weights_moves_the_base_too_and_checkpoints_it(tiny_model_dir, tiny_dataset, tmp_path):
    trainer = InteractiveTrainer(
        stage2_args(tiny_model_dir, tiny_dataset, tmp_path, max_train_steps=2, train_base_weights=True)
    )
    trainer.setup()
    model = trainer.accelerator.unwrap_model(trainer.transformer)
    start = {name: value.detach().clone() for name, value in model.state_dict().items()}
    trainer.train()
    base_names = [
        name for name, _ in model.named_parameters() if not name.startswith(("control_proj.", "control_blocks."))
    ]
    moved = [
        name for name in base_names if not torch.equal(model.state_dict()[name].to(start[name].dtype), start[name])
    ]
    assert len(moved) > len(base_names) // 2
    checkpointed = load_file(str(tmp_path / "checkpoints" / "checkpoint-2" / "trainable.safetensors")).keys()
    assert set(base_names) <= set(checkpointed)


def test_control_feed_forward_mult_sets_the_modules_feed_forwards_the_recipe_has_them(
    tiny_model_dir, tiny_dataset, tmp_path
):
    def control_blocks(**overrides):
        trainer = InteractiveTrainer(
            stage2_args(tiny_model_dir, tiny_dataset, tmp_path, max_train_steps=1, **overrides)
        )
        trainer.setup()
        return trainer.accelerator.unwrap_model(trainer.transformer).control_blocks

    assert all(block.ff is not None and block.ff_norm.linear.weight.requires_grad for block in control_blocks())
    assert all(block.ff is None for block in control_blocks(control_feed_forward_mult=0))
    with pytest.raises(ConfigError, match="control_feed_forward_mult"):
        stage2_args(tiny_model_dir, tiny_dataset, tmp_path, control_feed_forward_mult=-1).check()


def test_trained_model_depends_on_controls_and_round_trips(trained):
    trainer, _ = trained
    pipeline = InteractivePipeline.from_model_dir(trainer.final_model_dir)
    transformer = pipeline.transformer
    assert transformer.control_vocabulary == TEST_VOCABULARY
    with torch.no_grad():
        straight = transformer(**transformer_inputs(transformer.config, controls=[0] * 5)).sample
        left = transformer(**transformer_inputs(transformer.config, controls=[1] * 5)).sample
    assert (straight - left).abs().mean() > 1e-3 * straight.abs().mean()
    live = trainer.accelerator.unwrap_model(trainer.transformer)
    with torch.no_grad():
        torch.testing.assert_close(live(**transformer_inputs(transformer.config, controls=[0] * 5)).sample, straight)


def test_saved_model_keeps_the_input_components_and_loads_in_stock_diffusers(trained, tiny_model_dir):
    """Only the transformer is written; diffusers' own loader builds the interactive one once thematrix is imported."""
    trainer, _ = trained
    assert_components_unchanged(tiny_model_dir, trainer.final_model_dir)
    pipeline = DiffusionPipeline.from_pretrained(str(trainer.final_model_dir))
    assert type(pipeline.transformer) is InteractiveCogVideoXTransformer3DModel
    assert pipeline.transformer.control_vocabulary == TEST_VOCABULARY


def test_the_model_directory_records_its_run_in_a_file_of_its_own(trained, tmp_path):
    """The next stage and inference read the record; saving from this directory writes a new one and leaves this
    one (which a hard link would share) as it was."""
    trainer, _ = trained
    recorded = GenerationDefaults.load(trainer.final_model_dir)
    assert recorded == trainer.args.generation_defaults() and (recorded.fps, recorded.num_frames) == (
        CLIP_FPS,
        TRAIN_FRAMES,
    )
    assert recorded.guidance_scale is None  # it trained captions (caption_p_zero < 1): the sampler's guidance
    record = trainer.final_model_dir / GENERATION_DEFAULTS_FILE
    before = record.read_bytes()
    changed = dataclasses.replace(recorded, prompt="Another prompt.")
    transformer = InteractiveCogVideoXTransformer3DModel.from_pretrained(
        trainer.final_model_dir, subfolder="transformer"
    )
    save_model_dir(transformer, trainer.final_model_dir, tmp_path / "next", changed)
    assert GenerationDefaults.load(tmp_path / "next") == changed and record.read_bytes() == before


def test_a_record_written_before_the_guidance_was_recorded_loads_without_it(tmp_path):
    """Records of models trained before the field say nothing of guidance: the sampler's own applies."""
    fields = dict(fps=CLIP_FPS, height=TINY_HEIGHT, width=TINY_WIDTH, num_frames=TRAIN_FRAMES, prompt="a car")
    (tmp_path / GENERATION_DEFAULTS_FILE).write_text(json.dumps(dict(fields, num_groups=None, group_size=None)))
    record = GenerationDefaults.load(tmp_path)
    assert record == GenerationDefaults(**fields) and record.guidance_scale is None


def test_validation_video_and_checkpoint_hold_the_module_only(trained):
    trainer, _ = trained
    frames, _, height, width = read_video_info(trainer.output_dir / "validation" / "step-20" / "prompt-0.mp4")
    assert (frames, height, width) == (9, TINY_HEIGHT, TINY_WIDTH)
    names = load_file(str(trainer.output_dir / "checkpoints" / "checkpoint-20" / "trainable.safetensors")).keys()
    assert names and all(name.startswith(("control_proj.", "control_blocks.")) for name in names)


def test_control_dropout_replaces_whole_clips_with_null(tiny_model_dir, tiny_dataset, tmp_path):
    trainer = InteractiveTrainer(stage2_args(tiny_model_dir, tiny_dataset, tmp_path, control_p_zero=0.5))
    trainer.setup()
    batch = {"controls": torch.arange(4 * 5).remainder(9).view(4, 5)}
    null_id = TEST_VOCABULARY.null_id
    dropped_counts = []
    for seed in range(20):
        generators = [torch.Generator().manual_seed(seed * 10 + index) for index in range(4)]
        controls = trainer.model_kwargs(batch, generators)["controls"]
        for row, original in zip(controls, batch["controls"]):
            assert torch.equal(row, original) or bool((row == null_id).all())
        dropped_counts.append(int((controls == null_id).all(dim=1).sum()))
    assert 0 < sum(dropped_counts) < 80


class RecordingTransformer(torch.nn.Module):
    """Stands in for the transformer in ``compute_loss``: records the text and controls each sample trains with."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.prompt_embeds, self.controls = [], []

    def forward(self, hidden_states, encoder_hidden_states, controls, **kwargs):
        self.prompt_embeds.append(encoder_hidden_states)
        self.controls.append(controls)
        return (torch.zeros_like(hidden_states),)


def test_caption_and_control_dropout_are_independent_and_use_the_empty_prompt(tiny_model_dir, tiny_dataset, tmp_path):
    """(empty text, null controls), the branch guidance subtracts, trains at caption_p_zero * control_p_zero."""
    trainer = InteractiveTrainer(stage2_args(tiny_model_dir, tiny_dataset, tmp_path))
    trainer.setup()
    assert trainer.args.caption_p_zero == trainer.args.control_p_zero == 0.1
    item = trainer.dataset[0]
    samples, batch_size = 2000, 500
    batch = {
        "latent_parameters": item["latent_parameters"].expand(batch_size, *item["latent_parameters"].shape),
        "prompt_embeds": item["prompt_embeds"].expand(batch_size, *item["prompt_embeds"].shape),
        "controls": item["controls"].expand(batch_size, -1),
        "caption": [item["caption"]] * batch_size,
    }
    recorder = RecordingTransformer(trainer.accelerator.unwrap_model(trainer.transformer).config)
    trainer.transformer = recorder
    with torch.no_grad():
        for first in range(0, samples, batch_size):
            trainer.compute_loss(batch, first)
    prompt_embeds, controls = torch.cat(recorder.prompt_embeds), torch.cat(recorder.controls)
    empty = trainer.empty_prompt_embeds[0]
    caption_dropped = torch.tensor([torch.equal(embeds, empty) for embeds in prompt_embeds])
    assert all(torch.equal(embeds, item["prompt_embeds"]) for embeds in prompt_embeds[~caption_dropped])
    control_dropped = (controls == TEST_VOCABULARY.null_id).all(dim=1)
    assert torch.equal(controls[~control_dropped], item["controls"].expand(int((~control_dropped).sum()), -1))
    rates = [
        float(dropped.float().mean())
        for dropped in (caption_dropped, control_dropped, caption_dropped & control_dropped)
    ]
    assert 0.07 < rates[0] < 0.13 and 0.07 < rates[1] < 0.13 and 0.004 < rates[2] < 0.02, rates


def test_model_of_another_architecture_is_refused(tiny_model_dir, tiny_dataset, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    config_file = other / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config["_class_name"] = "HunyuanVideoTransformer3DModel"
    config_file.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="pass the output_dir of stage1/fuse_lora_weights.py"):
        InteractiveTrainer(stage2_args(other, tiny_dataset, tmp_path / "out")).train()


def test_rotary_embedding_model_is_refused_at_start(tiny_model_dir, tiny_dataset, tmp_path):
    """A 5B-style transformer trains in stage 1, but the interactive pipelines do not pass rotary embeddings."""
    rotary = tmp_path / "rotary"
    shutil.copytree(tiny_model_dir, rotary)
    config_file = rotary / "transformer" / "config.json"
    config_file.write_text(json.dumps(dict(json.loads(config_file.read_text()), use_rotary_positional_embeddings=True)))
    with pytest.raises(ConfigError, match="rotary.*stages 2-4 need a 2B-style one"):
        InteractiveTrainer(stage2_args(rotary, tiny_dataset, tmp_path / "out")).setup()


def test_stage1_directory_is_refused_by_stage2_inference(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="needs a InteractiveCogVideoXTransformer3DModel"):
        inference.main(["--model_dir", str(tiny_model_dir), "--controls", "RIGHT"])


@pytest.mark.parametrize(
    "controls, per_video_frame, message",
    [
        ("RIGHT,RIGHT,X", False, "unknown control token 'X'"),
        ("RIGHT,RIGHT", False, "2 controls for 3 latent frames; give exactly 3"),
        ("RIGHT,RIGHT,RIGHT", True, "3 per-video-frame controls for 9 video frames; give exactly 9"),
        ("RIGHT,,RIGHT", False, "empty control token"),
    ],
)
def test_bad_control_strings_say_what_is_expected(controls, per_video_frame, message):
    with pytest.raises(ControlError, match=message):
        parse_controls(controls, TEST_VOCABULARY, 3, 4, per_video_frame)


def test_per_video_frame_controls_take_every_fourth_token():
    tokens = ["RIGHT", "LEFT", "LEFT", "LEFT", "UP", "DOWN", "DOWN", "DOWN", "STAY"]
    assert parse_controls(tokens, TEST_VOCABULARY, 3, 4, per_video_frame=True) == ["RIGHT", "UP", "STAY"]
    assert video_frame_labels(["RIGHT", "UP", "STAY"], 4) == ["RIGHT"] + ["UP"] * 4 + ["STAY"] * 4


class KnownVelocities(torch.nn.Module):
    """A transformer stub whose output is the input latents plus a known value per (text, controls) branch.

    v(empty, null) = 1, v(text, null) = 2, v(text, controls) = 10 and v(empty, controls) = 4: no two guidance
    combinations of different branches coincide. Records the batch size of every call.
    """

    control_vocabulary = TEST_VOCABULARY

    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def forward(self, hidden_states, encoder_hidden_states, timestep, controls, return_dict):
        self.batch_sizes.append(hidden_states.shape[0])
        text = encoder_hidden_states.flatten(1).abs().amax(dim=1)  # 0 for the empty prompt's stand-in, 1 for text
        control = (controls != TEST_VOCABULARY.null_id).all(dim=1).float()
        value = 1 + text + 3 * control + 5 * text * control
        return (hidden_states + value[:, None, None, None, None],)


@pytest.mark.parametrize(
    "guidance_scale, control_guidance_scale, forwards",
    [(1.0, 1.0, 1), (6.0, 1.0, 3), (6.0, 6.0, 2), (1.0, 2.5, 2), (6.0, 2.5, 3), (6.0, 0.0, 2)],
)
def test_guidance_is_the_documented_formula_with_one_batched_forward(guidance_scale, control_guidance_scale, forwards):
    """v_u + w (v_t - v_u) + c (v_tc - v_t), running only the branches whose coefficient is not zero."""
    stub = KnownVelocities()
    pipeline = InteractivePipeline(tokenizer=None, text_encoder=None, vae=None, transformer=stub, scheduler=None)
    latents = torch.randn(2, 3, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    text, empty = torch.ones(2, 5, 8), torch.zeros(2, 5, 8)
    controls = torch.tensor([[0, 1, 2], [3, 4, 5]])
    velocity = pipeline.guided_velocity(
        latents, torch.tensor([500, 500]), text, empty, controls, guidance_scale, control_guidance_scale
    )
    unconditional, text_only, conditional = 1.0, 2.0, 10.0
    expected = (
        unconditional
        + guidance_scale * (text_only - unconditional)
        + control_guidance_scale * (conditional - text_only)
    )
    torch.testing.assert_close(velocity, latents + expected)
    assert stub.batch_sizes == [forwards * len(latents)]


def test_the_pipeline_returns_an_output_like_cogvideox_pipelines(trained):
    trainer, _ = trained
    pipeline = InteractivePipeline.from_model_dir(trainer.final_model_dir)
    sampling = dict(prompt="A square.", controls="RIGHT,LEFT,UP", num_frames=9, num_inference_steps=2)
    output = pipeline(**sampling, output_type="pt", generator=torch.Generator().manual_seed(0))
    assert isinstance(output, InteractivePipelineOutput) and output.controls == [["RIGHT", "LEFT", "UP"]]
    assert (
        output.frames.shape == (1, 9, 3, TINY_HEIGHT, TINY_WIDTH)
        and 0 <= output.frames.min() <= output.frames.max() <= 1
    )
    frames, controls = pipeline(
        **sampling, output_type="pt", return_dict=False, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(frames, output.frames) and controls == output.controls


def test_inference_writes_controlled_mp4(trained, tmp_path):
    trainer, _ = trained
    output = inference.main(
        [
            "--model_dir",
            str(trainer.final_model_dir),
            "--controls",
            "RIGHT,LEFT,UP",
            "--num_frames",
            "9",
            "--num_inference_steps",
            "2",
            "--control_guidance_scale",
            "2",
            "--output",
            str(tmp_path / "v.mp4"),
        ]
    )
    assert read_video_info(output)[0] == 9


def test_resume_after_kill_equals_uninterrupted_run(tiny_model_dir, tiny_dataset, tmp_path):
    """Control dropout draws from the per-sample generators too, so a resumed run matches exactly."""
    settings = dict(
        max_train_steps=4,
        checkpointing_steps=2,
        control_p_zero=0.5,
        lr_scheduler="cosine",
        cache_dir=str(tmp_path / "cache"),
    )
    whole_and_resumed(
        InteractiveTrainer,
        lambda run: stage2_args(tiny_model_dir, tiny_dataset, tmp_path / run, **settings),
        kill_at=3,
        killed_leaves=["checkpoint-2"],
    )
    whole, again = (
        load_file(str(tmp_path / run / "checkpoints" / "checkpoint-4" / "trainable.safetensors"))
        for run in ("whole", "killed")
    )
    assert whole.keys() == again.keys() and all(torch.equal(whole[key], again[key]) for key in whole)
    scheduler_state = [
        torch.load(tmp_path / run / "checkpoints" / "checkpoint-4" / "scheduler.bin", weights_only=False)
        for run in ("whole", "killed")
    ]
    assert scheduler_state[0] == scheduler_state[1]
