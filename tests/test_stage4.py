"""Stage 4 (SCM) on the tiny model: the boundary condition, the distillation schedule, learning, the EMA target
and exact resume, a LoRA student, and the few-step stream: closer to the many-step teacher, steerable, the CLI."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stage3.cogvideox.pipeline_cogvideox import SwinDPMPipeline
from stage3.training.arguments import SwinArgs
from stage4 import inference
from stage4.cogvideox.pipeline_cogvideox import ScmPipeline
from stage4.cogvideox.scheduler import ConsistencySchedule, ScmScheduler, distillation_timesteps, teacher_schedule
from stage4.train_text_to_video_scm import EmaTarget, ScmTrainer
from stage4.training.arguments import ScmArgs
from tests.conftest import (
    CLIP_FPS,
    CLIP_FRAMES,
    TINY_HEIGHT,
    TINY_WIDTH,
    moving_square_clip,
    tiny_run_args,
    whole_and_resumed,
)
from tests.test_acceleration import COMPILE_ROUNDING_STEPS, TEST_BACKEND
from thematrix import acceleration
from thematrix.config import ConfigError, load_config
from thematrix.data.dataset import collate_batch
from thematrix.model_dir import (
    DEFAULT_TEXT_GUIDANCE,
    NO_TEXT_GUIDANCE,
    SCM_SAMPLER,
    SWIN_DPM_SAMPLER,
    ModelDirError,
    generation_defaults,
)
from thematrix.presets import TINY
from thematrix.schedules import GroupedInferenceSchedule, c_out, c_skip, phase_boundaries, phase_boundary_below
from thematrix.training import trainer as trainer_module
from thematrix.training.checkpoint import TRAINABLE_WEIGHTS
from thematrix.video import read_video_info

# The tiny window of the stage-3 fixture and the conftest clips: 2 history + 1 + 2 x 2 latent frames (25 video frames).
NUM_GROUPS, GROUP_SIZE = 2, 2
TEACHER_STEPS = 8  # 4 teacher steps per phase
DISTILL_STEPS, DISTILL_LR = 100, 3e-3
STREAM_GROUPS = 3
EMA_CHECKPOINT = "custom_checkpoint_0.pkl"  # accelerate's file for the first object registered for checkpointing
NUM_TRAIN_TIMESTEPS = TINY["scheduler"]["num_train_timesteps"]
REPOSITORY = Path(__file__).parents[1]
SMALL_ADAPTER_STD = 2e-3  # lora_B of a tiny trained adapter: its updates are a few 1e-3 of the base weights


def scm_args(teacher, dataset, output_dir, **overrides) -> ScmArgs:
    settings = dict(
        num_noise_groups=NUM_GROUPS,
        group_size=GROUP_SIZE,
        frame_buckets=(CLIP_FRAMES,),
        teacher_num_inference_steps=TEACHER_STEPS,
        validation_num_inference_steps=NUM_GROUPS,
        validation_groups=STREAM_GROUPS,
        max_train_steps=4,
    )
    return tiny_run_args(ScmArgs(), teacher, dataset, output_dir, **{**settings, **overrides})


@pytest.fixture(scope="module")
def teacher_dir(model_dir):  # noqa: F811  (requests the imported fixture)
    """Stage 3's test model: the tiny interactive transformer with random control gates, so controls matter."""
    return model_dir


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One latent cache for every run of this file: they share the teacher and the clips."""
    return str(tmp_path_factory.mktemp("stage4-cache"))


@pytest.fixture(scope="module")
def distilled(teacher_dir, tiny_dataset, cache_dir, tmp_path_factory):
    """A full student distilled for DISTILL_STEPS steps, with its loss on held-out noise before and after."""
    output_dir = tmp_path_factory.mktemp("stage4") / "run"
    # Unguided, so that the student is compared with unguided teacher streams below.
    trainer = ScmTrainer(
        scm_args(
            teacher_dir,
            tiny_dataset,
            output_dir,
            max_train_steps=DISTILL_STEPS,
            distill_guidance=False,
            learning_rate=DISTILL_LR,
            cache_dir=cache_dir,
            validation_steps=DISTILL_STEPS,
        )
    )
    trainer.setup()
    batch = collate_batch([trainer.dataset[index] for index in range(len(trainer.dataset))])
    held_out = [10**6 + 10 * draw for draw in range(4)]  # noise and timesteps no training step draws

    def held_out_loss() -> float:
        with torch.no_grad():
            return sum(trainer.compute_loss(batch, position).item() for position in held_out)

    before = held_out_loss()
    trainer.train()
    return trainer, before, held_out_loss()


def teacher_grid(num_groups=4, teacher_steps=40, **config) -> GroupedInferenceSchedule:
    """The teacher's grouped schedule of the tiny model's scheduler (with ``config`` changed)."""
    return teacher_schedule(ScmScheduler(**{**TINY["scheduler"], **config}), teacher_steps, num_groups)


# ---------------------------------------------------------------- the consistency function
def test_scalings_make_the_consistency_function_the_identity_at_a_boundary():
    boundaries = phase_boundaries(4, NUM_TRAIN_TIMESTEPS)
    assert torch.equal(c_skip(boundaries, boundaries), torch.ones(5))
    assert torch.equal(c_out(boundaries, boundaries), torch.zeros(5))
    schedule = ScmScheduler(**TINY["scheduler"]).grouped_schedule(4, 4)
    generator = torch.Generator().manual_seed(0)
    sample, velocity = (torch.randn(2, 3, 4, 6, 8, generator=generator) * 5 for _ in range(2))
    at_boundary = boundaries[[0, 2, 4]].expand(2, 3)
    assert torch.equal(schedule.step(velocity, sample, at_boundary, at_boundary)[0], sample)
    # Away from the boundary it is DDIM scaled by c_out plus c_skip times the input.
    now, boundary = torch.tensor([[500, 251, 999]] * 2), torch.tensor([[499, 249, 749]] * 2)
    ddim = super(ConsistencySchedule, schedule).step(velocity, sample, now, boundary)[0]
    expected = (
        c_skip(now, boundary)[..., None, None, None] * sample + c_out(now, boundary)[..., None, None, None] * ddim
    )
    torch.testing.assert_close(schedule.step(velocity, sample, now, boundary)[0], expected)


def test_student_consistency_output_equals_its_input_at_the_boundary(distilled):
    trainer, _, _ = distilled
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 1 + NUM_GROUPS * GROUP_SIZE, 4, 6, 8, generator=generator)
    _, boundary = distillation_timesteps(
        trainer.teacher_schedule, GROUP_SIZE, trainer.args.skipping_interval, generator
    )
    embeds = trainer.validation_embeds[:1]
    with torch.no_grad():
        velocity = trainer.velocity(trainer.transformer, latents, boundary, embeds, None)
    assert velocity.abs().max() > 0
    assert torch.equal(trainer.consistency.step(velocity, latents, boundary, boundary)[0], latents)


# ---------------------------------------------------------------- the distillation schedule
@pytest.mark.parametrize("skipping_interval", [1, 3, 10])
def test_distillation_timesteps_walk_the_teacher_grid_inside_each_phase(skipping_interval):
    teacher = teacher_grid()
    grid = set(teacher.timesteps.tolist())
    boundaries = phase_boundaries(4, NUM_TRAIN_TIMESTEPS)
    band = NUM_TRAIN_TIMESTEPS // 4
    generator = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(60):
        path, boundary = distillation_timesteps(teacher, 2, skipping_interval, generator)
        assert path.shape == (1, skipping_interval + 1, 9) and boundary.shape == (1, 9)
        t, s = path[0, 0], path[0, -1]
        assert t[0] == s[0] == boundary[0, 0] == 0  # the condition frame: clean, its own boundary
        t, s, b = t[1:], s[1:], boundary[0, 1:]
        assert (s < t).all() and (s >= b).all()
        assert torch.equal(b, phase_boundary_below(t, boundaries))
        inside = s != b  # a target short of its boundary (the clean end -1 lies in no phase)
        assert torch.equal(phase_boundary_below(s[inside], boundaries), b[inside])  # never leaves t's phase
        assert set(path[0, :, 1:].flatten().tolist()) <= grid
        assert (path[0, 1:] <= path[0, :-1]).all()
        assert torch.equal(t.diff()[1::2], torch.full((3,), band))  # groups one band apart, as in sampling
        starts.add(int(t[0]))
        if skipping_interval >= 10:  # k >= N / G: every target is the boundary itself
            assert torch.equal(s, b)
    assert len(starts) == 10  # every teacher step of the phase is drawn


def test_a_teacher_grid_without_the_phase_boundaries_is_refused():
    with pytest.raises(ValueError, match="misses phase boundaries"):
        teacher_grid(timestep_spacing="leading")


# ---------------------------------------------------------------- training
def test_distillation_lowers_the_held_out_loss(distilled):
    _, before, after = distilled
    # Measured: 0.039 -> 0.025 after 100 steps.
    assert after < 0.7 * before, (before, after)


def test_the_teacher_is_guided_by_default_as_stage_3_streams_are(
    teacher_dir, tiny_dataset, cache_dir, tmp_path, monkeypatch
):
    args = scm_args(teacher_dir, tiny_dataset, tmp_path, cache_dir=cache_dir)
    assert (
        args.distill_guidance
        and load_config(REPOSITORY / "stage4" / "training" / "scm_config.py", ScmArgs).distill_guidance
    )
    trainer = ScmTrainer(args)
    trainer.setup()
    stream_defaults = inspect.signature(SwinDPMPipeline.stream).parameters
    assert (args.guidance_scale, args.control_guidance_scale) == (
        stream_defaults["guidance_scale"].default,
        stream_defaults["control_guidance_scale"].default,
    )
    scales = []
    velocity = SwinDPMPipeline.guided_velocity

    def recorded(self, *velocity_args):
        scales.append(velocity_args[5:7])
        return velocity(self, *velocity_args)

    monkeypatch.setattr(SwinDPMPipeline, "guided_velocity", recorded)
    with torch.no_grad():
        trainer.compute_loss(collate_batch([trainer.dataset[0]]), 0)
    assert scales and set(scales) == {(args.guidance_scale, args.control_guidance_scale)}


def test_ema_target_is_float32_moves_toward_the_student_and_shares_frozen_weights():
    student = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)).to(torch.bfloat16)
    student[0].requires_grad_(False)
    ema = EmaTarget(student, decay=0.75, compute_dtype=torch.bfloat16)
    assert ema.module[0].weight is student[0].weight and ema.module[1].weight is not student[1].weight
    assert ema.module[1].weight.dtype == torch.float32 and student[1].weight.dtype == torch.bfloat16
    start = {name: weight.clone() for name, weight in ema.state_dict().items()}
    with torch.no_grad():
        student[1].weight.add_(1.0)
    ema.update((name, param) for name, param in student.named_parameters() if param.requires_grad)
    assert set(start) == {"1.weight", "1.bias"}
    torch.testing.assert_close(ema.module[1].weight, 0.75 * start["1.weight"] + 0.25 * student[1].weight.float())
    torch.testing.assert_close(ema.module[1].bias, start["1.bias"])


def test_ema_target_moves_its_buffers_and_averaged_weights_and_runs_in_the_compute_dtype():
    """The control embedding table is a buffer: a target whose buffers stayed behind failed on the GPU; and under
    DeepSpeed, which runs without autocast, its float32 weights met the student's bfloat16 inputs."""
    student = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)).to(torch.bfloat16)
    student.register_buffer("table", torch.ones(2))
    ema = EmaTarget(student, decay=0.75, compute_dtype=torch.bfloat16)
    inputs = torch.ones(2, 3, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="dtype"):
        ema.module(inputs)
    output = ema(inputs)
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(output, student(inputs))
    ema.to(torch.device("meta"))
    assert {tensor.device.type for tensor in [*ema.module.parameters(), *ema.module.buffers()]} == {"meta"}
    assert student.table.device.type == "cpu"


def test_resume_after_kill_restores_student_and_ema_target_exactly(teacher_dir, tiny_dataset, cache_dir, tmp_path):
    settings = dict(max_train_steps=4, checkpointing_steps=2, learning_rate=1e-3, cache_dir=cache_dir)
    whole_and_resumed(
        ScmTrainer,
        lambda run: scm_args(teacher_dir, tiny_dataset, tmp_path / run, **settings),
        kill_at=4,
        killed_leaves=["checkpoint-2"],
    )

    def checkpoint(run: str, step: int) -> tuple[dict, dict]:
        """(student's trainable weights, EMA target) of a run's checkpoint."""
        folder = tmp_path / run / "checkpoints" / f"checkpoint-{step}"
        return load_file(str(folder / TRAINABLE_WEIGHTS)), torch.load(folder / EMA_CHECKPOINT)

    for step in (2, 4):
        (weights, target), (weights_again, target_again) = checkpoint("whole", step), checkpoint("killed", step)
        assert weights.keys() == target.keys() == target_again.keys()
        for key in weights:
            assert torch.equal(weights[key], weights_again[key]), (step, key)
            assert torch.equal(target[key], target_again[key]), (step, key)
    (middle, middle_target), (final, final_target) = checkpoint("whole", 2), checkpoint("whole", 4)
    moved = [key for key in final if not torch.equal(final[key], middle[key])]
    assert moved
    for key in moved:  # the target follows the student, a step behind
        assert not torch.equal(final_target[key], middle_target[key]) and not torch.equal(final_target[key], final[key])


def test_compiled_blocks_run_student_teacher_and_target_compiled_to_the_eager_weights(
    teacher_dir, tiny_dataset, cache_dir, tmp_path, monkeypatch, fresh_compiler
):
    monkeypatch.setattr(acceleration, "DEFAULT_COMPILE_BACKEND", TEST_BACKEND)
    targets = {}
    for compiled in (False, True):
        args = scm_args(
            teacher_dir,
            tiny_dataset,
            tmp_path / f"compiled_{compiled}",
            max_train_steps=2,
            learning_rate=1e-3,
            cache_dir=cache_dir,
            compile_blocks=compiled,
        )
        trainer = ScmTrainer(args)
        trainer.train()
        targets[compiled] = trainer.ema.state_dict()
    models = (
        trainer.accelerator.unwrap_model(trainer.transformer),
        trainer.teacher_pipeline.transformer,
        trainer.ema.module,
    )
    assert all(block._compiled_call_impl is not None for model in models for block in model.transformer_blocks)
    assert targets[True].keys() == targets[False].keys()
    for name, weight in targets[True].items():
        torch.testing.assert_close(weight, targets[False][name], atol=COMPILE_ROUNDING_STEPS * 1e-3, rtol=0)


def test_lora_student_trains_adapters_and_saves_a_fused_model(teacher_dir, tiny_dataset, cache_dir, tmp_path):
    args = scm_args(
        teacher_dir,
        tiny_dataset,
        tmp_path,
        student="lora",
        lora_rank=4,
        lora_alpha=4.0,
        max_train_steps=2,
        learning_rate=1e-2,
        cache_dir=cache_dir,
    )
    trainer = ScmTrainer(args)
    trainer.train()
    checkpoint = tmp_path / "checkpoints" / "checkpoint-2"
    names = load_file(str(checkpoint / TRAINABLE_WEIGHTS)).keys()
    assert names and all("lora" in name for name in names)
    assert torch.load(checkpoint / EMA_CHECKPOINT).keys() == names
    student = ScmPipeline.from_model_dir(trainer.final_model_dir).transformer
    teacher = ScmPipeline.from_model_dir(teacher_dir).transformer
    assert not any("lora" in name for name in student.state_dict())
    changed = [
        name for name, value in student.state_dict().items() if not torch.equal(value, teacher.state_dict()[name])
    ]
    assert changed and all(name.endswith("weight") and "to_" in name for name in changed)


# ---------------------------------------------------------------- the few-step stream
def stream_latents(streamer, num_inference_steps, controls="RIGHT,RIGHT,LEFT,LEFT,UP,UP", max_groups=STREAM_GROUPS):
    """The emitted groups' latents [K * W, C, h, w] of a stream from a conftest clip, noise seeded alike."""
    clip = torch.from_numpy(moving_square_clip(0, CLIP_FRAMES, TINY_HEIGHT, TINY_WIDTH)).permute(0, 3, 1, 2) / 127.5 - 1
    chunks = list(
        streamer.stream(
            "",
            clip,
            controls,
            num_groups=NUM_GROUPS,
            group_size=GROUP_SIZE,
            num_inference_steps=num_inference_steps,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0),
            max_groups=max_groups,
        )
    )
    return chunks, torch.stack([chunk.latents[-GROUP_SIZE:] for chunk in chunks])


def test_few_step_student_is_closer_to_the_many_step_teacher_than_the_teacher_is(distilled, teacher_dir):
    trainer, _, _ = distilled
    teacher = SwinDPMPipeline.from_model_dir(teacher_dir)
    _, reference = stream_latents(teacher, TEACHER_STEPS)
    _, teacher_few = stream_latents(teacher, NUM_GROUPS)
    _, student_few = stream_latents(ScmPipeline.from_model_dir(trainer.final_model_dir), NUM_GROUPS)
    teacher_error = ((teacher_few - reference) ** 2).flatten(1).mean(1)
    student_error = ((student_few - reference) ** 2).flatten(1).mean(1)
    print(
        f"MSE to the {TEACHER_STEPS}-step teacher per group: teacher {NUM_GROUPS}-step {teacher_error.tolist()}, "
        f"student {NUM_GROUPS}-step {student_error.tolist()}"
    )
    # Measured: teacher about 0.24 per group, student about 0.045.
    assert (student_error < 0.5 * teacher_error).all()


def test_few_step_stream_takes_one_forward_per_group_and_emits_every_frame(distilled):
    trainer, _, _ = distilled
    student = ScmPipeline.from_model_dir(trainer.final_model_dir)
    forwards = []
    student.transformer.register_forward_pre_hook(lambda module, inputs: forwards.append(1))
    chunks = list(
        student.stream(
            "",
            torch.zeros(CLIP_FRAMES, 3, TINY_HEIGHT, TINY_WIDTH),
            "RIGHT",
            num_groups=NUM_GROUPS,
            group_size=GROUP_SIZE,
            max_groups=STREAM_GROUPS,
        )
    )
    assert [len(chunk.frames) for chunk in chunks] == [student.temporal_compression * GROUP_SIZE] * STREAM_GROUPS
    assert len(forwards) == STREAM_GROUPS


def test_few_step_stream_is_steered_from_the_group_a_control_change_enters(distilled):
    trainer, _, _ = distilled
    student = ScmPipeline.from_model_dir(trainer.final_model_dir)
    changed_group, groups = NUM_GROUPS + 1, 5

    def turn(group: int) -> list[str]:
        return ["JUMP" if group >= changed_group else "RIGHT"] * GROUP_SIZE

    (_, steady), (_, turning) = (stream_latents(student, None, controls, groups) for controls in ("RIGHT", turn))
    first_affected = changed_group - NUM_GROUPS + 1  # it enters the window after group J - G is emitted
    for group in range(groups):
        assert torch.equal(steady[group], turning[group]) == (group < first_affected), group


def test_inference_streams_with_one_unguided_forward_per_group(distilled, tiny_dataset, tmp_path, capsys, monkeypatch):
    trainer, _, _ = distilled
    data_root, index_file = tiny_dataset
    guidance_scales = []
    velocity = SwinDPMPipeline.guided_velocity

    def recorded(self, *args):
        guidance_scales.append(args[5])
        return velocity(self, *args)

    monkeypatch.setattr(SwinDPMPipeline, "guided_velocity", recorded)
    groups = 2
    output = inference.main(
        [
            "--model_dir",
            str(trainer.final_model_dir),
            "--data_root",
            str(data_root),
            "--index_file",
            str(index_file),
            "--groups",
            str(groups),
            "--controls",
            "RIGHT,LEFT",
            "--num_groups",
            str(NUM_GROUPS),
            "--group_size",
            str(GROUP_SIZE),
            "--fps",
            str(CLIP_FPS),
            "--output",
            str(tmp_path / "drive.mp4"),
        ]
    )
    assert read_video_info(output)[0] == 4 * GROUP_SIZE * groups
    assert guidance_scales == [1.0] * groups
    printed = capsys.readouterr().out
    assert "time to first frame" in printed and "frames per second" in printed


def test_more_steps_than_groups_are_refused(distilled, tiny_dataset, tmp_path, capsys):
    """The student is trained to land each group on its phase boundary: it has no defined jump inside a phase."""
    trainer, _, _ = distilled
    student = ScmPipeline.from_model_dir(trainer.final_model_dir)
    with pytest.raises(ValueError, match="num_inference_steps = 4 with num_groups = 2: an SCM student takes one step"):
        student.stream(
            "",
            torch.zeros(CLIP_FRAMES, 3, TINY_HEIGHT, TINY_WIDTH),
            "RIGHT",
            num_groups=NUM_GROUPS,
            group_size=GROUP_SIZE,
            num_inference_steps=2 * NUM_GROUPS,
        )
    data_root, index_file = tiny_dataset
    with pytest.raises(SystemExit):
        inference.main(
            [
                "--model_dir",
                str(trainer.final_model_dir),
                "--data_root",
                str(data_root),
                "--index_file",
                str(index_file),
                "--controls",
                "RIGHT",
                "--num_groups",
                str(NUM_GROUPS),
                "--group_size",
                str(GROUP_SIZE),
                "--num_inference_steps",
                str(2 * NUM_GROUPS),
                "--output",
                str(tmp_path / "drive.mp4"),
            ]
        )
    assert "num_inference_steps = 4 with num_groups = 2" in capsys.readouterr().err


def test_validation_writes_the_few_step_stream(distilled):
    trainer, _, _ = distilled
    video = trainer.output_dir / "validation" / f"step-{DISTILL_STEPS}" / "prompt-0.mp4"
    assert read_video_info(video)[0] == 4 * GROUP_SIZE * STREAM_GROUPS


def test_a_teacher_that_streams_without_text_guidance_is_distilled_without_it(teacher_dir, tiny_dataset, tmp_path):
    """A stage-3 model whose run dropped every caption records no text guidance: the student learns the stream
    its teacher makes by default, even where the stage keeps its captions; a scale given is kept."""
    unguided = tmp_path / "unguided-teacher"
    shutil.copytree(teacher_dir, unguided)
    record = generation_defaults(unguided)
    dataclasses.replace(record, sampler=SWIN_DPM_SAMPLER, guidance_scale=NO_TEXT_GUIDANCE).save(unguided)
    for given, resolved in ((None, NO_TEXT_GUIDANCE), (3.0, 3.0)):
        trainer = ScmTrainer(scm_args(unguided, tiny_dataset, tmp_path / f"run-{given}", guidance_scale=given))
        trainer.setup()
        assert trainer.args.guidance_scale == resolved


def test_text_guidance_to_distil_without_captions_is_refused_once_the_teachers_is_known(
    teacher_dir, tiny_dataset, tmp_path, nothing_loads
):
    """The teacher records no guidance (CogVideoX's then): with every caption dropped there is none to distil."""
    trainer = ScmTrainer(scm_args(teacher_dir, tiny_dataset, tmp_path, caption_p_zero=1.0))
    with pytest.raises(ConfigError, match="every caption is dropped"):
        trainer.setup()


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("teacher_num_inference_steps", 30, "divisible by args.num_noise_groups"),
        ("skipping_interval", 0, "at least 1"),
        ("ema_decay", 1.0, "ema_decay"),
        ("loss_type", "l1", "loss_type"),
        ("student", "half", "args.student"),
        ("validation_num_inference_steps", 8, "must equal args.num_noise_groups"),
        ("guidance_scale", DEFAULT_TEXT_GUIDANCE, "every caption is dropped"),  # with caption_p_zero = 1 below
    ],
)
def test_bad_settings_fail_with_the_setting_named(setting, value, message):
    args = ScmArgs(caption_p_zero=1.0)  # what the checks allow where no guidance is given or distilled
    args.num_noise_groups = 4  # the window, which the trainer otherwise takes from the model
    setattr(args, setting, value)
    with pytest.raises(ConfigError, match=message):
        args.check()


def test_a_model_without_the_interactive_module_is_refused(tiny_model_dir, tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="stage 4 distils a stage-3 model"):
        ScmTrainer(scm_args(tiny_model_dir, tiny_dataset, tmp_path)).setup()


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fails a test whose run loads a model's weights: what it checks must be refused before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was reported")

    monkeypatch.setattr(trainer_module, "load_components", refuse)


def test_groups_that_do_not_split_the_timesteps_are_refused_naming_the_window(
    teacher_dir, tiny_dataset, tmp_path, nothing_loads
):
    """Not as a fault of args.teacher_num_inference_steps (9 steps split into 3 groups)."""
    args = scm_args(
        teacher_dir,
        tiny_dataset,
        tmp_path,
        num_noise_groups=3,
        group_size=1,
        teacher_num_inference_steps=9,
        frame_buckets=None,
        validation_num_inference_steps=None,
    )
    with pytest.raises(ConfigError, match=r"^args.num_noise_groups = 3: .* must divide 1000, e.g. one of \[1, 2, 4,"):
        ScmTrainer(args).setup()


@pytest.mark.parametrize(
    "sampler, found",
    [(None, "records no Swin-DPM sampler: its window was never trained"), ("scm", "was trained for the 'scm' sampler")],
)
def test_a_teacher_whose_window_stage_3_did_not_train_is_refused(
    teacher_dir, tiny_dataset, tmp_path, nothing_loads, sampler, found
):
    """A stage-2 model (its record names no sampler) or a student has the teacher's transformer class, but never
    learned stage 3's shifted window."""
    recorded = tmp_path / "model"
    shutil.copytree(teacher_dir, recorded)
    dataclasses.replace(generation_defaults(recorded), fps=CLIP_FPS, sampler=sampler).save(recorded)
    with pytest.raises(ModelDirError, match=rf"{recorded}'? {found}.*pass stage 3's <output_dir>/model"):
        ScmTrainer(scm_args(recorded, tiny_dataset, tmp_path / "run")).setup()


def test_stage_3_and_4_record_the_sampler_their_model_was_trained_for(teacher_dir, tiny_dataset, tmp_path):
    for args, sampler in ((SwinArgs(), SWIN_DPM_SAMPLER), (ScmArgs(), SCM_SAMPLER)):
        settings = dict(num_noise_groups=NUM_GROUPS, group_size=GROUP_SIZE, validation_prompts=("a prompt",))
        args = tiny_run_args(args, teacher_dir, tiny_dataset, tmp_path, **settings)
        assert args.generation_defaults().sampler == sampler


def test_lora_student_is_fused_and_saved_in_float32(teacher_dir, tiny_dataset, cache_dir, tmp_path):
    """A bf16 run's adapters are fused into float32 weights: the saved model is the unfused student, where fusing into
    the bf16 base would round most of a small adapter away."""
    args = scm_args(
        teacher_dir, tiny_dataset, tmp_path, student="lora", lora_rank=4, lora_alpha=4.0, cache_dir=cache_dir
    )
    trainer = ScmTrainer(args)
    trainer.setup()
    student = trainer.accelerator.unwrap_model(trainer.transformer)
    # The state of a bf16 run at its end (one accelerate state per process, so set here): frozen weights in bf16,
    # trained adapters in float32, with updates about 1e-3 of the base weights.
    trainer.weight_dtype = torch.bfloat16
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in student.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, SMALL_ADAPTER_STD, generator=generator)
            elif not parameter.requires_grad:
                parameter.data = parameter.data.to(torch.bfloat16)
    inputs = dict(
        hidden_states=torch.randn(1, 1 + NUM_GROUPS * GROUP_SIZE, 4, 6, 8, generator=generator),
        encoder_hidden_states=torch.randn(1, 226, 32, generator=generator),
        timestep=torch.tensor([300]),
        controls=torch.tensor([[0, 1, 2, 3, 4]]),
    )
    reference = copy.deepcopy(student).to(torch.float32)  # bf16 base weights, float32 adapters, float32 arithmetic
    with torch.no_grad():
        unfused = reference(**inputs).sample
        reference.disable_adapters()
        base = reference(**inputs).sample
    trainer.save_final(student)
    saved = ScmPipeline.from_model_dir(trainer.final_model_dir, dtype=torch.float32).transformer
    assert saved.dtype == torch.float32
    with torch.no_grad():
        fused = saved(**inputs).sample
    effect = (unfused - base).abs().max()
    assert effect > 0
    torch.testing.assert_close(fused, unfused, rtol=0, atol=1e-2 * float(effect))
