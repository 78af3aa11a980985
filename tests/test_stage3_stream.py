"""Stage 3's Swin-DPM stream on the tiny model: frame accounting, determinism, exact streaming decode, flat
memory, live controls, windows training draws from the first one on, input errors, the scheduler and the CLI."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import shutil
import time

import pytest
import torch

from stage3 import inference
from stage3.cogvideox.pipeline_cogvideox import (
    StreamChunk,
    StreamPipelineOutput,
    SwinDPMPipeline,
    history_latent_frames,
    window_clip_frames,
)
from stage4 import inference as scm_inference
from stage4.cogvideox.pipeline_cogvideox import STUDENT_GUIDANCE_SCALE, ScmPipeline
from stage4.cogvideox.scheduler import ScmScheduler
from tests.conftest import CLIP_FPS, CLIP_FRAMES, TEST_VOCABULARY, TINY_HEIGHT, TINY_WIDTH, moving_square_clip
from thematrix.controls import ControlError
from thematrix.data.dataset import DatasetError
from thematrix.model_dir import (
    DEFAULT_TEXT_GUIDANCE,
    NO_TEXT_GUIDANCE,
    SCM_SAMPLER,
    SWIN_DPM_SAMPLER,
    ModelDirError,
    generation_defaults,
)
from thematrix.schedules import CONDITION_TIMESTEP
from thematrix.streaming_vae import StreamingDecoder
from thematrix.video import read_video_info, write_mp4
from thematrix.video_stream import Mp4StreamWriter

# A small window for speed: 1 + 2 x 2 latent frames, two inner steps per band.
NUM_GROUPS, GROUP_SIZE, NUM_STEPS = 2, 2, 4
PROMPT = "A red car drives along a grey track."
# Smallest frame the tiny model takes: 2x2 latents (8x VAE) = one 2x2 transformer patch.
MIN_SIZE = 16


def initial_clip(frames: int = CLIP_FRAMES, height: int = TINY_HEIGHT, width: int = TINY_WIDTH) -> torch.Tensor:
    return torch.rand(frames, 3, height, width, generator=torch.Generator().manual_seed(2)) * 2 - 1


def stream(pipeline, controls="RIGHT,LEFT", max_groups=3, seed=0, video=None, **options):
    """A stream from a random initial clip one window long (or ``video``)."""
    options = dict(dict(num_groups=NUM_GROUPS, group_size=GROUP_SIZE, num_inference_steps=NUM_STEPS), **options)
    if video is None:
        video = initial_clip(window_clip_frames(pipeline.vae, options["num_groups"], options["group_size"]))
    return pipeline.stream(
        PROMPT, video, controls, max_groups=max_groups, generator=torch.Generator().manual_seed(seed), **options
    )


@pytest.fixture
def decoder_inputs(monkeypatch) -> list[torch.Tensor]:
    """Every latent chunk the stream's StreamingDecoder is fed, in order."""
    fed = []
    decode = StreamingDecoder.decode

    def recorded(self, latents):
        fed.append(latents.clone())
        return decode(self, latents)

    monkeypatch.setattr(StreamingDecoder, "decode", recorded)
    return fed


def frames_of(chunks: list[StreamChunk]) -> torch.Tensor:
    return torch.cat([chunk.frames for chunk in chunks])


@pytest.mark.parametrize("num_groups, group_size, num_steps", [(NUM_GROUPS, GROUP_SIZE, NUM_STEPS), (4, 4, 20)])
def test_k_groups_give_c_w_k_frames(pipeline, num_groups, group_size, num_steps):
    """Every chunk is one group: c * W frames, no special first chunk."""
    groups, c = 3, pipeline.temporal_compression
    chunks = list(
        stream(pipeline, max_groups=groups, num_groups=num_groups, group_size=group_size, num_inference_steps=num_steps)
    )
    assert [len(chunk.frames) for chunk in chunks] == [c * group_size] * groups
    assert [len(chunk.latents) for chunk in chunks] == [group_size] * groups
    assert [chunk.group_index for chunk in chunks] == list(range(groups))
    pattern = itertools.cycle(["RIGHT", "LEFT"])
    for chunk in chunks:
        assert chunk.controls == [next(pattern) for _ in range(group_size)]
        assert chunk.frame_controls == [token for token in chunk.controls for _ in range(c)]
        assert chunk.frames.device.type == "cpu" and chunk.frames.dtype == torch.float32
        assert chunk.frames.shape[1:] == (3, TINY_HEIGHT, TINY_WIDTH) and chunk.frames.abs().max() <= 1
    assert all(a.elapsed_s < b.elapsed_s for a, b in itertools.pairwise(chunks))


def test_generate_collects_the_stream(pipeline):
    chunks = list(stream(pipeline, max_groups=2, initial_control="STAY"))
    output = pipeline.generate(
        PROMPT,
        initial_clip(),
        "RIGHT,LEFT",
        max_groups=2,
        num_groups=NUM_GROUPS,
        group_size=GROUP_SIZE,
        num_inference_steps=NUM_STEPS,
        generator=torch.Generator().manual_seed(0),
        initial_control="STAY",
        output_type="pt",
    )
    assert isinstance(output, StreamPipelineOutput)
    (video,), (labels,) = output.frames, output.frame_controls
    torch.testing.assert_close(video * 2 - 1, frames_of(chunks), rtol=0, atol=1e-6)  # the same frames, in [0, 1]
    assert labels == [
        token for token in ["RIGHT", "LEFT", "RIGHT", "LEFT"] for _ in range(pipeline.temporal_compression)
    ]
    assert len(video) == len(labels)


def test_a_longer_initial_clip_starts_from_its_last_window(pipeline):
    """Only the last window-clip's frames matter: earlier frames change nothing."""
    clip = initial_clip()
    longer = torch.cat([initial_clip(frames=9) * 0.5, clip])
    assert torch.equal(frames_of(list(stream(pipeline, video=longer))), frames_of(list(stream(pipeline, video=clip))))


def test_the_frames_of_a_group_started_at_pure_noise_are_not_encoded(pipeline, monkeypatch):
    """Zero terminal SNR (the tiny model's, CogVideoX's) noises the last group's frames away at the start: the
    encode leaves them out, and the stream is the one a whole encode gives, bit for bit."""
    encoded_frames = []
    encode_window = SwinDPMPipeline.encode_window

    def recorded(self, clip):
        encoded_frames.append(len(clip))
        return encode_window(self, clip)

    monkeypatch.setattr(SwinDPMPipeline, "encode_window", recorded)
    shortened = list(stream(pipeline, video=initial_clip()))
    monkeypatch.setattr(SwinDPMPipeline, "unencoded_latent_frames", lambda self, frames: 0)
    whole = list(stream(pipeline, video=initial_clip()))
    window = window_clip_frames(pipeline.vae, NUM_GROUPS, GROUP_SIZE)
    assert encoded_frames == [window - pipeline.temporal_compression * GROUP_SIZE, window]
    assert torch.equal(frames_of(shortened), frames_of(whole))
    assert all(torch.equal(chunk.latents, again.latents) for chunk, again in zip(shortened, whole, strict=True))


def test_frames_are_left_out_of_the_encode_only_in_whole_encoder_batches(pipeline, monkeypatch):
    """Leaving out part of one of the encoder's frame batches would move the others and change every latent."""
    left_out = pipeline.temporal_compression * GROUP_SIZE
    assert pipeline.unencoded_latent_frames(GROUP_SIZE) == GROUP_SIZE
    monkeypatch.setattr(pipeline.vae, "num_sample_frames_batch_size", 2 * left_out)
    assert pipeline.unencoded_latent_frames(GROUP_SIZE) == 0
    assert pipeline.unencoded_latent_frames(2 * GROUP_SIZE) == 2 * GROUP_SIZE


def test_same_seed_same_video(pipeline):
    first, again, other = (frames_of(list(stream(pipeline, seed=seed))) for seed in (0, 0, 1))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_streamed_frames_equal_decoding_history_condition_and_groups_at_once(pipeline, decoder_inputs):
    """The decoder is primed with [history, condition] (its output is the clip's, not shown); the stream is then
    exactly vae.decode of all those latents without the frames of the primed ones."""
    chunks = list(stream(pipeline, max_groups=4))
    history = history_latent_frames(pipeline.vae)
    primed = decoder_inputs[0]
    assert primed.shape[1] == history + 1 and len(decoder_inputs) == 1 + len(chunks)
    latents = torch.cat([primed[0].cpu(), *(chunk.latents for chunk in chunks)])[None]
    whole = pipeline.decode_latents(latents)[0].permute(1, 0, 2, 3).clamp(-1, 1)  # [F, 3, H, W]
    shown = whole[1 + pipeline.temporal_compression * history :]
    torch.testing.assert_close(frames_of(chunks), shown, rtol=0, atol=1e-5)


def test_memory_stays_flat_over_fifty_groups(pipeline):
    video = initial_clip(height=MIN_SIZE, width=MIN_SIZE)
    chunks = list(stream(pipeline, max_groups=50, video=video, num_inference_steps=NUM_GROUPS))
    assert len(chunks) == 50
    assert chunks[4].state_nbytes == chunks[49].state_nbytes > 0
    assert len({chunk.state_nbytes for chunk in chunks[1:]}) == 1
    # Emitted latents are copies without autograd history: a caller keeping chunks keeps no window alive.
    for chunk in chunks:
        assert not chunk.latents.requires_grad and not chunk.frames.requires_grad
        assert chunk.latents.untyped_storage().nbytes() == chunk.latents.numel() * chunk.latents.element_size()


def test_a_control_change_changes_only_the_groups_denoised_with_it(pipeline):
    """Group J enters the window after group J - G is emitted; groups up to J - G never see it."""
    changed_group, groups = NUM_GROUPS + 1, 5

    def steady(group: int) -> list[str]:
        return ["RIGHT"] * GROUP_SIZE

    def turn(group: int) -> list[str]:
        return ["JUMP"] * GROUP_SIZE if group >= changed_group else steady(group)

    before, after = (list(stream(pipeline, controls=controls, max_groups=groups)) for controls in (steady, turn))
    first_affected = changed_group - NUM_GROUPS + 1
    for index in range(groups):
        same = torch.equal(before[index].frames, after[index].frames)
        assert same == (index < first_affected), f"group {index}"


def test_controls_are_asked_once_per_group_entering_the_window_after_the_previous_chunk(pipeline):
    asked = []

    def controls(group: int) -> list[str]:
        asked.append(group)
        return ["RIGHT"] * GROUP_SIZE

    chunks = stream(pipeline, controls=controls, max_groups=4)
    assert asked == []  # nothing runs before the first chunk is asked for
    next(chunks)
    assert asked == list(range(NUM_GROUPS))
    next(chunks)
    assert asked == list(range(NUM_GROUPS + 1))
    list(chunks)
    assert asked == list(range(4 + NUM_GROUPS - 1))


def test_controls_as_string_callable_or_iterator_are_equivalent(pipeline):
    expected = frames_of(list(stream(pipeline, controls="RIGHT,LEFT")))
    for controls in (lambda group: ["RIGHT", "LEFT"], iter([["RIGHT", "LEFT"]] * 4), itertools.repeat("RIGHT,LEFT")):
        assert torch.equal(frames_of(list(stream(pipeline, controls=controls))), expected)


@pytest.mark.parametrize(
    "kind, num_groups, group_size, num_steps",
    [
        ("swin-dpm", NUM_GROUPS, GROUP_SIZE, NUM_STEPS),
        ("swin-dpm", 4, 2, 8),
        ("swin-dpm", 8, 2, 16),  # odd bands (T/G = 125), whose CogVideoX grid rounds half steps to even
        ("scm", NUM_GROUPS, GROUP_SIZE, NUM_GROUPS),
        ("scm", 4, 2, 4),
    ],
)
def test_every_window_the_transformer_sees_is_one_training_draws(pipeline, kind, num_groups, group_size, num_steps):
    """Stage 3's and stage 4's streams, first windows included: the condition frame at 0, every frame of group g at
    u + g * T/G with one u in [0, T/G) (what grouped_training_timesteps draws). The initial clip's groups start at
    their band tops, every later group at pure noise, and each goes down the N timesteps in order."""
    streamer = (
        pipeline
        if kind == "swin-dpm"
        else ScmPipeline(**dict(pipeline.components, scheduler=ScmScheduler.from_config(pipeline.scheduler.config)))
    )
    seen = []
    handle = streamer.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["timestep"].clone()), with_kwargs=True
    )
    groups = 3
    try:
        list(
            stream(
                streamer, max_groups=groups, num_groups=num_groups, group_size=group_size, num_inference_steps=num_steps
            )
        )
    finally:
        handle.remove()
    band = streamer.scheduler.config.num_train_timesteps // num_groups
    for row in torch.cat(seen):  # every row of every (guidance-batched) forward
        assert row[0] == CONDITION_TIMESTEP
        group_timesteps = row[1:].view(num_groups, group_size)
        assert (group_timesteps == group_timesteps[:, :1]).all()
        offset = group_timesteps[0, 0]
        assert 0 <= offset < band and torch.equal(group_timesteps[:, 0], offset + band * torch.arange(num_groups)), row

    schedule = streamer.scheduler.grouped_schedule(num_steps, num_groups)
    assert len(seen) == groups * schedule.steps_per_band  # no warm-up forwards
    history = {}
    for call, timesteps in enumerate(seen):
        first_group = call // schedule.steps_per_band  # outer iteration i holds groups i..i+G-1
        for position, group_timesteps in enumerate(timesteps[0, 1:].split(group_size)):
            history.setdefault(first_group + position, []).append(int(group_timesteps[0]))
    for group in range(groups):
        first_index = max(0, num_groups - 1 - group) * schedule.steps_per_band
        assert history[group] == schedule.timesteps[first_index:num_steps].tolist(), f"group {group}"


def test_the_clip_latents_are_float32_draws_whatever_the_vae_dtype(pipeline, decoder_inputs):
    """With a bf16 VAE the clip's latents are still drawn as training draws them: float32 noise on its float32
    mean and std, not noise drawn, and so quantized, in bf16. The decoder's priming input is those latents."""
    bf16 = SwinDPMPipeline(**dict(pipeline.components, vae=copy.deepcopy(pipeline.vae).to(torch.bfloat16)))
    clip = initial_clip()
    list(stream(bf16, video=clip, max_groups=1, seed=5))
    mean, logvar = bf16.encode_window(clip).parameters.float().chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    expected = (mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise) * bf16.vae.config.scaling_factor
    primed = decoder_inputs[0]
    assert primed.dtype == torch.float32
    torch.testing.assert_close(primed, expected.permute(0, 2, 1, 3, 4)[:, : primed.shape[1]], rtol=0, atol=0)


def recorded_copy(model_dir, directory, sampler: str | None):
    """``model_dir`` with a record of its training whose window was trained for ``sampler``."""
    shutil.copytree(model_dir, directory)
    dataclasses.replace(generation_defaults(directory), fps=CLIP_FPS, sampler=sampler).save(directory)
    return directory


def test_a_stage_2_model_is_refused_where_a_stage_3_model_is_needed(model_dir, tmp_path):
    """Same transformer class, but its record says stage 2 never trained the shifted window."""
    stage2 = recorded_copy(model_dir, tmp_path / "stage2", None)
    message = rf"--model_dir = '{stage2}' records no Swin-DPM sampler.*pass stage 3's <output_dir>/model"
    with pytest.raises(ModelDirError, match=message):
        SwinDPMPipeline.check_stage_model(stage2)
    with pytest.raises(ModelDirError, match=message):
        inference.main(["--model_dir", str(stage2), "--initial_video", "any.mp4", "--output", str(tmp_path / "a.mp4")])


def test_a_model_is_streamed_by_the_sampler_it_was_trained_for(model_dir, tmp_path):
    stage3 = recorded_copy(model_dir, tmp_path / "stage3", SWIN_DPM_SAMPLER)
    assert SwinDPMPipeline.check_stage_model(stage3) == stage3
    with pytest.raises(ModelDirError, match=r"'swin-dpm' sampler \(stage 3\).*pass stage 4's <output_dir>/model"):
        ScmPipeline.check_stage_model(stage3)
    stage4 = recorded_copy(model_dir, tmp_path / "stage4", SCM_SAMPLER)
    assert ScmPipeline.check_stage_model(stage4) == stage4
    with pytest.raises(ModelDirError, match=r"'scm' sampler \(stage 4\).*pass stage 3's <output_dir>/model"):
        SwinDPMPipeline.check_stage_model(stage4)


def test_each_window_is_conditioned_on_the_last_frame_emitted_before_it(pipeline, decoder_inputs):
    """The first condition frame is the clip's latent after the history (the last latent the decoder is primed
    with); later ones the previous group's last, with its control."""
    inputs = []

    def record(module, args, kwargs):
        inputs.append((kwargs["hidden_states"][0, 0].clone(), int(kwargs["controls"][0, 0])))

    handle = pipeline.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:

        def controls(group):
            return [TEST_VOCABULARY.tokens[group], TEST_VOCABULARY.tokens[group + 1]]

        chunks = list(stream(pipeline, controls=controls, guidance_scale=1.0, initial_control="STAY"))
    finally:
        handle.remove()
    schedule = pipeline.scheduler.grouped_schedule(NUM_STEPS, NUM_GROUPS)
    expected = [(decoder_inputs[0][0, -1], "STAY")] + [(chunk.latents[-1], chunk.controls[-1]) for chunk in chunks[:-1]]
    for call, (condition, control_id) in enumerate(inputs):
        latent, token = expected[call // schedule.steps_per_band]
        assert torch.equal(condition, latent) and control_id == TEST_VOCABULARY.token_id(token), f"call {call}"


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_inference_steps=5), "num_inference_steps \\(5\\) must be divisible by num_groups \\(2\\)"),
        (
            dict(video=initial_clip(frames=24)),
            "initial_video has 24 frames; a stream of 2 groups of 2 latent frames starts from the last 25 frames",
        ),
        (dict(video=initial_clip(height=40)), "multiples of 16"),
        (dict(group_size=3), "group_size must be a positive multiple of 2"),
        (dict(max_groups=0), "max_groups must be at least 1"),
    ],
)
def test_bad_settings_fail_at_the_call(pipeline, options, message):
    with pytest.raises(ValueError, match=message):
        stream(pipeline, **options)


@pytest.mark.parametrize(
    "controls, options, message",
    [
        ("RIGHT,X", {}, "unknown control token 'X'"),
        ("RIGHT", dict(initial_control="Q"), "unknown control token 'Q'"),
        (lambda group: ["RIGHT", "Q"], {}, "controls for group 0: unknown control token 'Q'"),
        (lambda group: ["RIGHT"] * 3, {}, "controls for group 0: got 3 tokens .* need group_size=2"),
        (iter([["RIGHT", "RIGHT"]] * 2), dict(max_groups=2), "controls iterator ended.* K \\+ num_groups - 1"),
    ],
)
def test_bad_controls_say_what_is_wrong(pipeline, controls, options, message):
    with pytest.raises(ControlError, match=message):
        list(stream(pipeline, controls=controls, **options))


def test_random_controls_hold_keys_and_repeat_with_the_seed():
    groups = list(itertools.islice(inference.random_controls(TEST_VOCABULARY, 2, seed=5), 40))
    assert groups == list(itertools.islice(inference.random_controls(TEST_VOCABULARY, 2, seed=5), 40))
    assert all(len(set(group)) == 1 and group[0] in TEST_VOCABULARY.tokens for group in groups)
    changes = sum(a != b for a, b in itertools.pairwise(groups))
    assert 0 < changes < len(groups) - 1


def wait_for(condition, timeout_s: float = 10.0, poll_s: float = 0.05) -> bool:
    """ffmpeg writes from its own process: poll until ``condition()`` holds or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(poll_s)
    return condition()


def test_stream_writer_shows_the_file_only_when_complete(tmp_path):
    frames = moving_square_clip(0, 8, TINY_HEIGHT, TINY_WIDTH)
    path = tmp_path / "out.mp4"
    with Mp4StreamWriter(path, fps=CLIP_FPS) as writer:
        writer.write(frames)
        writer.write(frames[:3])
        assert wait_for(writer.partial_path.exists) and not path.exists()
        with pytest.raises(ValueError, match="sent to a video of 64x48"):
            writer.write(frames[:, :32])
    assert read_video_info(path)[:1] == (11,) and not writer.partial_path.exists()
    broken = tmp_path / "broken.mp4"
    with pytest.raises(KeyboardInterrupt), Mp4StreamWriter(broken, fps=CLIP_FPS) as writer:
        writer.write(frames)
        raise KeyboardInterrupt
    assert not broken.exists() and read_video_info(writer.partial_path)[0] == 8


def test_inference_streams_under_the_empty_prompt_when_given_it(model_dir, tiny_dataset, tmp_path, monkeypatch):
    """--prompt "" is the empty caption (a stage trained without captions streams under it), not "no prompt": the
    sample's caption does not replace it; nor does it replace the empty caption a model records when its run
    dropped every caption."""
    data_root, index_file = tiny_dataset
    uncaptioned = recorded_copy(model_dir, tmp_path / "uncaptioned", SWIN_DPM_SAMPLER)
    dataclasses.replace(generation_defaults(uncaptioned), prompt="").save(uncaptioned)
    prompts = []

    def stop(self, prompt, *arguments, **options):
        prompts.append(prompt)
        raise KeyboardInterrupt

    monkeypatch.setattr(SwinDPMPipeline, "stream", stop)
    command = ["--data_root", str(data_root), "--index_file", str(index_file)]
    command += ["--num_groups", str(NUM_GROUPS), "--group_size", str(GROUP_SIZE), "--fps", str(CLIP_FPS)]
    for model, prompt in ((model_dir, ["--prompt", ""]), (model_dir, []), (uncaptioned, [])):
        with pytest.raises(KeyboardInterrupt):
            inference.main(["--model_dir", str(model), *command, *prompt])
    assert prompts[0] == "" and prompts[1] and prompts[2] == ""  # without --prompt: the sample's caption


def test_streams_sample_at_the_guidance_the_model_records_unless_told(model_dir, tiny_dataset, tmp_path, monkeypatch):
    """--guidance_scale when given; else the model's record (no guidance where its run dropped every caption); else
    the sampler's: CogVideoX's for stage 3, none for stage 4's student."""
    data_root, index_file = tiny_dataset
    unguided = recorded_copy(model_dir, tmp_path / "stage3", SWIN_DPM_SAMPLER)
    dataclasses.replace(generation_defaults(unguided), guidance_scale=NO_TEXT_GUIDANCE).save(unguided)
    student = recorded_copy(model_dir, tmp_path / "stage4", SCM_SAMPLER)
    scales = []

    def stop(self, prompt, *arguments, guidance_scale, **options):
        scales.append(guidance_scale)
        raise KeyboardInterrupt

    monkeypatch.setattr(SwinDPMPipeline, "stream", stop)  # ScmPipeline.stream passes its guidance on to it
    command = ["--data_root", str(data_root), "--index_file", str(index_file), "--fps", str(CLIP_FPS)]
    command += ["--num_groups", str(NUM_GROUPS), "--group_size", str(GROUP_SIZE)]
    for stage, model, options in (
        (inference, model_dir, []),
        (inference, unguided, []),
        (inference, unguided, ["--guidance_scale", "4"]),
        (scm_inference, student, []),
    ):
        with pytest.raises(KeyboardInterrupt):
            stage.main(["--model_dir", str(model), *command, *options])
    assert scales == [DEFAULT_TEXT_GUIDANCE, NO_TEXT_GUIDANCE, 4.0, STUDENT_GUIDANCE_SCALE]


def test_inference_streams_a_dataset_sample_to_mp4(model_dir, tiny_dataset, tmp_path, capsys):
    data_root, index_file = tiny_dataset
    groups, output = 3, tmp_path / "drive.mp4"
    inference.main(
        [
            "--model_dir",
            str(model_dir),
            "--data_root",
            str(data_root),
            "--index_file",
            str(index_file),
            "--sample_index",
            "1",
            "--groups",
            str(groups),
            "--controls",
            "RIGHT,LEFT",
            "--num_groups",
            str(NUM_GROUPS),
            "--group_size",
            str(GROUP_SIZE),
            "--num_inference_steps",
            str(NUM_STEPS),
            "--fps",
            str(CLIP_FPS),
            "--output",
            str(output),
        ]
    )
    frames, _, height, width = read_video_info(output)
    assert (frames, height, width) == (4 * GROUP_SIZE * groups, TINY_HEIGHT, TINY_WIDTH)
    printed = capsys.readouterr().out
    assert "time to first frame" in printed and "frames per second" in printed and f"group {groups}/{groups}" in printed
    assert not output.with_name(output.name + ".partial").exists()


def test_inference_continues_a_video_file_with_random_controls(model_dir, tmp_path):
    clip = write_mp4(moving_square_clip(1, 40, TINY_HEIGHT, TINY_WIDTH), tmp_path / "clip.mp4", fps=CLIP_FPS)
    output = inference.main(
        [
            "--model_dir",
            str(model_dir),
            "--initial_video",
            str(clip),
            "--random_controls",
            "--seed",
            "3",
            "--prompt",
            "A red square slides right.",
            "--seconds",
            "3",
            "--fps",
            "8",
            "--num_groups",
            str(NUM_GROUPS),
            "--group_size",
            str(GROUP_SIZE),
            "--num_inference_steps",
            str(NUM_GROUPS),
            "--output",
            str(tmp_path / "random.mp4"),
        ]
    )
    # 3 s at 8 fps = 24 frames: 3 groups of 8 frames.
    assert read_video_info(output)[0] == 24


def test_inference_says_how_long_the_initial_video_must_be(model_dir, tmp_path, capsys):
    clip = write_mp4(moving_square_clip(1, 24, TINY_HEIGHT, TINY_WIDTH), tmp_path / "clip.mp4", fps=CLIP_FPS)
    with pytest.raises(DatasetError, match="gives 24 frames at 10 fps; the stream starts from the last 25 \\(2.5 s\\)"):
        inference.main(
            [
                "--model_dir",
                str(model_dir),
                "--initial_video",
                str(clip),
                "--controls",
                "RIGHT",
                "--fps",
                "10",
                "--num_groups",
                str(NUM_GROUPS),
                "--group_size",
                str(GROUP_SIZE),
                "--output",
                str(tmp_path / "short.mp4"),
            ]
        )


def test_inference_without_an_initial_clip_says_what_to_pass(model_dir, capsys):
    with pytest.raises(SystemExit):
        inference.main(["--model_dir", str(model_dir), "--controls", "RIGHT"])
    assert "needs an initial clip: pass --initial_video FILE, or --data_root" in capsys.readouterr().err
