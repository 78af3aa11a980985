"""Stage 3's Swin-DPM stream on the tiny model: frame accounting, determinism, exact streaming decode, flat
memory, live controls, the schedule every group goes through, input errors, the scheduler and the CLI."""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from stage3 import inference
from stage3.cogvideox.pipeline_cogvideox import StreamChunk
from stage3.cogvideox.scheduler import SwinScheduler
from tests.conftest import CLIP_FPS, TINY_HEIGHT, TINY_WIDTH, moving_square_clip
from thematrix.controls import DEFAULT_VOCABULARY, ControlError
from thematrix.schedules import CONDITION_TIMESTEP, grouped_training_timesteps
from thematrix.video import read_video_info, write_mp4
from thematrix.video_stream import Mp4StreamWriter

# A small window for speed: 1 + 2 x 2 latent frames, one inner step per band.
NUM_GROUPS, GROUP_SIZE, NUM_STEPS = 2, 2, 4
INITIAL_FRAMES = 5
PROMPT = "A red car drives along a grey track."
# Smallest frame the tiny model takes: 2x2 latents (8x VAE) = one 2x2 transformer patch.
MIN_SIZE = 16


def initial_clip(frames: int = INITIAL_FRAMES, height: int = TINY_HEIGHT, width: int = TINY_WIDTH) -> torch.Tensor:
    return torch.rand(frames, 3, height, width, generator=torch.Generator().manual_seed(2)) * 2 - 1


def stream(pipeline, controls="D,DL", max_groups=3, seed=0, video=None, **options):
    options = dict(dict(num_groups=NUM_GROUPS, group_size=GROUP_SIZE, num_inference_steps=NUM_STEPS), **options)
    return pipeline.stream(
        PROMPT, initial_clip() if video is None else video, controls, max_groups=max_groups,
        generator=torch.Generator().manual_seed(seed), **options,
    )


def frames_of(chunks: list[StreamChunk]) -> torch.Tensor:
    return torch.cat([chunk.frames for chunk in chunks])


@pytest.mark.parametrize("num_groups, group_size, num_steps", [(NUM_GROUPS, GROUP_SIZE, NUM_STEPS), (4, 4, 20)])
def test_k_groups_give_one_plus_c_w_k_frames(pipeline, num_groups, group_size, num_steps):
    """First chunk: the condition frame (1 video frame) + group 0 (c * W); every later chunk: c * W."""
    groups, c = 3, pipeline.temporal_compression
    chunks = list(stream(pipeline, max_groups=groups, num_groups=num_groups, group_size=group_size,
                         num_inference_steps=num_steps))
    assert [len(chunk.frames) for chunk in chunks] == [1 + c * group_size] + [c * group_size] * (groups - 1)
    assert [len(chunk.latents) for chunk in chunks] == [1 + group_size] + [group_size] * (groups - 1)
    assert [chunk.group_index for chunk in chunks] == list(range(groups))
    pattern = itertools.cycle(["D", "DL"])
    for chunk in chunks:
        assert chunk.controls == [next(pattern) for _ in range(group_size)]
        assert len(chunk.frame_controls) == len(chunk.frames)
        assert chunk.frames.device.type == "cpu" and chunk.frames.dtype == torch.float32
        assert chunk.frames.shape[1:] == (3, TINY_HEIGHT, TINY_WIDTH) and chunk.frames.abs().max() <= 1
    # The condition frame shows the first group's first control (no initial_control given).
    assert chunks[0].frame_controls == ["D"] + [token for token in chunks[0].controls for _ in range(c)]
    assert all(a.elapsed_s < b.elapsed_s for a, b in itertools.pairwise(chunks))


def test_generate_collects_the_stream(pipeline):
    chunks = list(stream(pipeline, max_groups=2, initial_control="N"))
    video, tokens = pipeline.generate(
        PROMPT, initial_clip(), "D,DL", max_groups=2, num_groups=NUM_GROUPS, group_size=GROUP_SIZE,
        num_inference_steps=NUM_STEPS, generator=torch.Generator().manual_seed(0), initial_control="N",
    )
    assert torch.equal(video, frames_of(chunks))
    assert tokens == ["N", "D", "DL", "D", "DL"]
    assert len(video) == 1 + pipeline.temporal_compression * (len(tokens) - 1)


def test_same_seed_same_video(pipeline):
    first, again, other = (frames_of(list(stream(pipeline, seed=seed))) for seed in (0, 0, 1))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_streamed_frames_equal_decoding_all_emitted_latents_at_once(pipeline):
    chunks = list(stream(pipeline, max_groups=4))
    latents = torch.cat([chunk.latents for chunk in chunks])[None]  # [1, 1 + W * K, C, h, w]
    whole = pipeline.decode_latents(latents)[0].permute(1, 0, 2, 3).clamp(-1, 1)  # [F, 3, H, W]
    torch.testing.assert_close(frames_of(chunks), whole, rtol=0, atol=1e-5)


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
        return ["D"] * GROUP_SIZE

    def turn(group: int) -> list[str]:
        return ["BL"] * GROUP_SIZE if group >= changed_group else steady(group)

    before, after = (list(stream(pipeline, controls=controls, max_groups=groups)) for controls in (steady, turn))
    first_affected = changed_group - NUM_GROUPS + 1
    for index in range(groups):
        same = torch.equal(before[index].frames, after[index].frames)
        assert same == (index < first_affected), f"group {index}"


def test_controls_are_asked_once_per_group_entering_the_window_after_the_previous_chunk(pipeline):
    asked = []

    def controls(group: int) -> list[str]:
        asked.append(group)
        return ["D"] * GROUP_SIZE

    chunks = stream(pipeline, controls=controls, max_groups=4)
    assert asked == []  # nothing runs before the first chunk is asked for
    next(chunks)
    assert asked == list(range(NUM_GROUPS))
    next(chunks)
    assert asked == list(range(NUM_GROUPS + 1))
    list(chunks)
    assert asked == list(range(4 + NUM_GROUPS - 1))


def test_controls_as_string_callable_or_iterator_are_equivalent(pipeline):
    expected = frames_of(list(stream(pipeline, controls="D,DL")))
    for controls in (lambda group: ["D", "DL"], iter([["D", "DL"]] * 4), itertools.repeat("D,DL")):
        assert torch.equal(frames_of(list(stream(pipeline, controls=controls))), expected)


@pytest.mark.parametrize("num_groups, group_size, num_steps", [(NUM_GROUPS, GROUP_SIZE, NUM_STEPS), (4, 2, 8)])
def test_every_group_goes_through_the_whole_schedule(pipeline, num_groups, group_size, num_steps):
    """From pure noise down all N timesteps in order; the condition frame always at timestep 0."""
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["timestep"][0].clone())

    handle = pipeline.transformer.register_forward_pre_hook(record, with_kwargs=True)
    groups = 3
    try:
        list(stream(pipeline, max_groups=groups, num_groups=num_groups, group_size=group_size,
                    num_inference_steps=num_steps))
    finally:
        handle.remove()
    schedule = pipeline.scheduler.grouped_schedule(num_steps, num_groups)
    assert len(seen) == schedule.num_warmup_steps + groups * schedule.steps_per_band
    history = {}
    for call, timesteps in enumerate(seen):
        assert timesteps[0] == CONDITION_TIMESTEP
        # Warm-up holds groups 0..G-1; outer iteration i holds groups i..i+G-1.
        first_group = max(0, call - schedule.num_warmup_steps) // schedule.steps_per_band
        for position, group_timesteps in enumerate(timesteps[1:].split(group_size)):
            assert len(set(group_timesteps.tolist())) == 1
            history.setdefault(first_group + position, []).append(int(group_timesteps[0]))
    for group in range(groups):
        moving = [t for k, t in enumerate(history[group]) if k == 0 or t != history[group][k - 1]]
        assert moving == schedule.timesteps[:num_steps].tolist(), f"group {group}"


def test_each_window_is_conditioned_on_the_last_frame_emitted_before_it(pipeline):
    """The first condition frame is the initial clip's last latent frame; later ones the previous group's last,
    with its control."""
    inputs = []

    def record(module, args, kwargs):
        inputs.append((kwargs["hidden_states"][0, 0].clone(), int(kwargs["controls"][0, 0])))

    handle = pipeline.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        controls = lambda group: [DEFAULT_VOCABULARY.tokens[group], DEFAULT_VOCABULARY.tokens[group + 1]]
        chunks = list(stream(pipeline, controls=controls, guidance_scale=1.0, initial_control="N"))
    finally:
        handle.remove()
    schedule = pipeline.scheduler.grouped_schedule(NUM_STEPS, NUM_GROUPS)
    initial = pipeline.encode_condition_frame(initial_clip(), torch.Generator().manual_seed(0))[0, 0]
    expected = [(initial, "N")] + [(chunk.latents[-1], chunk.controls[-1]) for chunk in chunks[:-1]]
    for call, (condition, control_id) in enumerate(inputs):
        iteration = max(0, call - schedule.num_warmup_steps) // schedule.steps_per_band
        latent, token = expected[iteration]
        assert torch.equal(condition, latent) and control_id == DEFAULT_VOCABULARY.token_id(token), f"call {call}"


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_inference_steps=5), "num_inference_steps \\(5\\) must be divisible by num_groups \\(2\\)"),
        (dict(video=initial_clip(frames=6)), "initial_video has 6 frames; it needs 4k\\+1"),
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
        ("D,X", {}, "unknown control token 'X'"),
        ("D", dict(initial_control="Q"), "unknown control token 'Q'"),
        (lambda group: ["D", "Q"], {}, "controls for group 0: unknown control token 'Q'"),
        (lambda group: ["D"] * 3, {}, "controls for group 0: got 3 tokens .* need group_size=2"),
        (iter([["D", "D"]] * 2), dict(max_groups=2), "controls iterator ended.* K \\+ num_groups - 1"),
    ],
)
def test_bad_controls_say_what_is_wrong(pipeline, controls, options, message):
    with pytest.raises(ControlError, match=message):
        list(stream(pipeline, controls=controls, **options))


def test_swin_scheduler_draws_grouped_window_timesteps(pipeline, tmp_path):
    scheduler = SwinScheduler.from_config(pipeline.scheduler.config)
    with pytest.raises(RuntimeError, match="configure_window"):
        scheduler.sample_training_timesteps(9, torch.Generator())
    scheduler.configure_window(4, 2)
    generator = torch.Generator().manual_seed(3)
    timesteps = scheduler.sample_training_timesteps(9, generator)
    assert timesteps.shape == (1, 9) and timesteps.dtype == torch.long and timesteps.device == generator.device
    expected = grouped_training_timesteps(1, 4, 2, scheduler.config.num_train_timesteps, torch.Generator().manual_seed(3))
    assert torch.equal(timesteps, expected)
    with pytest.raises(ValueError, match="1 \\+ 4 x 2 = 9 latent frames"):
        scheduler.sample_training_timesteps(13, generator)
    # The window is not config: a saved scheduler folder is a stock one and loads unconfigured.
    scheduler.save_pretrained(tmp_path)
    loaded = SwinScheduler.from_pretrained(tmp_path)
    assert "num_noise_groups" not in loaded.config and loaded.num_noise_groups is None
    assert loaded.grouped_schedule(20, 4).steps_per_band == 5


def test_random_controls_hold_keys_and_repeat_with_the_seed():
    groups = list(itertools.islice(inference.random_controls(DEFAULT_VOCABULARY, 2, seed=5), 40))
    assert groups == list(itertools.islice(inference.random_controls(DEFAULT_VOCABULARY, 2, seed=5), 40))
    assert all(len(set(group)) == 1 and group[0] in DEFAULT_VOCABULARY.tokens for group in groups)
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


def test_inference_streams_a_dataset_sample_to_mp4(model_dir, tiny_dataset, tmp_path, capsys):
    data_root, index_file = tiny_dataset
    groups, output = 3, tmp_path / "drive.mp4"
    inference.main([
        "--model_dir", str(model_dir), "--data_root", str(data_root), "--index_file", str(index_file),
        "--sample_index", "1", "--groups", str(groups), "--controls", "D,DL", "--num_groups", str(NUM_GROUPS),
        "--group_size", str(GROUP_SIZE), "--num_inference_steps", str(NUM_STEPS), "--output", str(output),
    ])
    frames, _, height, width = read_video_info(output)
    assert (frames, height, width) == (1 + 4 * GROUP_SIZE * groups, TINY_HEIGHT, TINY_WIDTH)
    printed = capsys.readouterr().out
    assert "time to first frame" in printed and "frames per second" in printed and f"group {groups}/{groups}" in printed
    assert not output.with_name(output.name + ".partial").exists()


def test_inference_continues_a_video_file_with_random_controls(model_dir, tmp_path):
    clip = write_mp4(moving_square_clip(1, 30, TINY_HEIGHT, TINY_WIDTH), tmp_path / "clip.mp4", fps=CLIP_FPS)
    output = inference.main([
        "--model_dir", str(model_dir), "--initial_video", str(clip), "--random_controls", "--seed", "3",
        "--seconds", "3", "--fps", "8", "--num_groups", str(NUM_GROUPS), "--group_size", str(GROUP_SIZE),
        "--num_inference_steps", str(NUM_GROUPS), "--output", str(tmp_path / "random.mp4"),
    ])
    # 3 s at 8 fps = 24 frames: ceil((24 - 1) / 8) = 3 groups of 8 frames after the condition frame.
    assert read_video_info(output)[0] == 25


def test_inference_without_an_initial_clip_says_what_to_pass(model_dir, capsys):
    with pytest.raises(SystemExit):
        inference.main(["--model_dir", str(model_dir), "--controls", "D"])
    assert "needs an initial clip: pass --initial_video FILE, or --data_root" in capsys.readouterr().err
