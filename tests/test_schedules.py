"""Noise-schedule utilities: per-frame CogVideoX training arithmetic, Swin-DPM grouped schedules, SCM phases."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

from thematrix.config import ConfigError
from thematrix.presets import TINY
from thematrix.schedules import (
    CLEAN_TIMESTEP,
    CogVideoXTrainingSchedule,
    GroupedInferenceSchedule,
    c_out,
    c_skip,
    expand_group_timesteps,
    grouped_training_timesteps,
    phase_boundaries,
    phase_boundary_below,
)
from thematrix.training.arguments import TrainingArgs
from thematrix.training.trainer import Trainer

NUM_GROUPS, GROUP_SIZE, NUM_STEPS = 4, 2, 20
BATCH, FRAMES, SHAPE = 2, 1 + NUM_GROUPS * GROUP_SIZE, (3, 4, 5)


@pytest.fixture
def scheduler() -> CogVideoXDPMScheduler:
    return CogVideoXDPMScheduler(**TINY["scheduler"])


@pytest.fixture
def schedule(scheduler) -> CogVideoXTrainingSchedule:
    return CogVideoXTrainingSchedule(scheduler)


def num_train_timesteps(scheduler) -> int:
    return scheduler.config.num_train_timesteps


def randn(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def alpha(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """alpha_bar per frame, broadcast over [B, F, C, H, W]: the test's own gather."""
    return scheduler.alphas_cumprod[timesteps].float().reshape(*timesteps.shape, 1, 1, 1)


# ---------------------------------------------------------------- training arithmetic
def test_add_noise_per_frame_with_equal_entries_equals_per_sample(schedule, scheduler):
    latents, noise = randn(BATCH, FRAMES, *SHAPE, seed=1), randn(BATCH, FRAMES, *SHAPE, seed=2)
    timesteps = torch.tensor([10, 700])
    per_sample = schedule.add_noise(latents, noise, timesteps)
    per_frame = schedule.add_noise(latents, noise, timesteps[:, None].expand(BATCH, FRAMES))
    torch.testing.assert_close(per_frame, per_sample, rtol=0, atol=0)
    torch.testing.assert_close(per_sample, scheduler.add_noise(latents, noise, timesteps), rtol=0, atol=0)


def test_add_noise_uses_each_frames_own_timestep(schedule, scheduler):
    latents, noise = randn(BATCH, FRAMES, *SHAPE, seed=1), randn(BATCH, FRAMES, *SHAPE, seed=2)
    generator = torch.Generator().manual_seed(3)
    timesteps = torch.randint(0, num_train_timesteps(scheduler), (BATCH, FRAMES), generator=generator)
    a = alpha(scheduler, timesteps)
    expected = a.sqrt() * latents + (1 - a).sqrt() * noise
    torch.testing.assert_close(schedule.add_noise(latents, noise, timesteps), expected)


def test_velocity_to_sample_inverts_add_noise_given_the_true_velocity(schedule, scheduler):
    clean, noise = randn(BATCH, FRAMES, *SHAPE, seed=4), randn(BATCH, FRAMES, *SHAPE, seed=5)
    for timesteps in (torch.tensor([3, 998]), grouped_training_timesteps(BATCH, NUM_GROUPS, GROUP_SIZE, 1000)):
        frame_timesteps = timesteps.reshape(BATCH, -1).expand(BATCH, FRAMES)
        a = alpha(scheduler, frame_timesteps)
        velocity = a.sqrt() * noise - (1 - a).sqrt() * clean
        noisy = schedule.add_noise(clean, noise, timesteps)
        torch.testing.assert_close(schedule.velocity_to_sample(velocity, noisy, timesteps), clean, rtol=0, atol=1e-5)


def test_loss_weight_is_one_over_one_minus_alpha_bar_and_broadcasts(schedule, scheduler):
    per_sample = torch.tensor([0, 999])
    weight = schedule.loss_weight(per_sample)
    assert weight.shape == (BATCH, 1, 1, 1, 1) and weight.dtype == torch.float32
    torch.testing.assert_close(weight.flatten(), (1 / (1 - scheduler.alphas_cumprod[per_sample])).float())
    assert weight[1].item() == pytest.approx(1.0)  # zero terminal SNR: alpha_bar_999 = 0
    per_frame = torch.tensor([[0, 500, 999]])
    assert schedule.loss_weight(per_frame).shape == (1, 3, 1, 1, 1)
    assert schedule.loss_weight(per_frame, ndim=3).shape == (1, 3, 1)


def test_timesteps_of_the_wrong_shape_are_refused(schedule):
    latents = randn(BATCH, FRAMES, *SHAPE)
    with pytest.raises(ValueError, match=r"\[B\] or \[B, F\]"):
        schedule.add_noise(latents, latents, torch.zeros(BATCH, FRAMES + 1, dtype=torch.long))


# ---------------------------------------------------------------- Swin-DPM training timesteps
def test_grouped_training_timesteps_bands(scheduler):
    total = num_train_timesteps(scheduler)
    width = total // NUM_GROUPS
    batch = 256
    timesteps = grouped_training_timesteps(batch, NUM_GROUPS, GROUP_SIZE, total, torch.Generator().manual_seed(0))
    assert timesteps.shape == (batch, FRAMES) and timesteps.dtype == torch.long
    assert (timesteps[:, 0] == 0).all()
    groups = timesteps[:, 1:].reshape(batch, NUM_GROUPS, GROUP_SIZE)
    assert (groups == groups[..., :1]).all()
    group_timesteps = groups[..., 0]
    for group in range(NUM_GROUPS):
        in_band = (group_timesteps[:, group] >= group * width) & (group_timesteps[:, group] < (group + 1) * width)
        assert in_band.all()
    assert (group_timesteps.diff(dim=1) == width).all()
    offsets = group_timesteps[:, 0]
    assert offsets.min() < width // 8 and offsets.max() > width - width // 8  # the whole band is drawn


def test_grouped_training_timesteps_follow_the_generator():
    def draw(seed):
        return grouped_training_timesteps(3, NUM_GROUPS, GROUP_SIZE, 1000, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(7), draw(7)) and not torch.equal(draw(7), draw(8))


def test_bands_must_divide_the_schedule():
    with pytest.raises(ValueError, match=r"3 noise groups .* must divide 1000, e.g. one of \[1, 2, 4, 5, 8, 10,"):
        grouped_training_timesteps(1, 3, GROUP_SIZE, 1000)


# ---------------------------------------------------------------- Swin-DPM inference schedule
def test_inference_steps_must_divide_into_groups(scheduler):
    with pytest.raises(ValueError, match=r"num_inference_steps \(10\) must be divisible by num_groups \(4\)"):
        GroupedInferenceSchedule(scheduler, 10, NUM_GROUPS)


def test_inference_timesteps_are_cogvideox_trailing_ones_and_leave_the_scheduler_alone(scheduler):
    grouped = GroupedInferenceSchedule(scheduler, NUM_STEPS, NUM_GROUPS)
    assert scheduler.num_inference_steps is None
    scheduler.set_timesteps(NUM_STEPS)
    assert grouped.timesteps.tolist() == scheduler.timesteps.tolist() + [CLEAN_TIMESTEP]
    assert grouped.timesteps[0] == num_train_timesteps(scheduler) - 1


def test_each_group_moves_exactly_one_band_per_outer_iteration(scheduler):
    grouped = GroupedInferenceSchedule(scheduler, NUM_STEPS, NUM_GROUPS)
    steps, width = grouped.steps_per_band, num_train_timesteps(scheduler) // NUM_GROUPS
    start, end = grouped.window_timesteps(0), grouped.window_timesteps(steps)
    assert end[0] == CLEAN_TIMESTEP  # group 0 is clean after N/G inner steps
    assert torch.equal(end[1:], start[:-1])  # every other group now sits where the cleaner one started
    assert start[-1] == grouped.timesteps[0]  # the fresh group is pure noise
    for group in range(NUM_GROUPS):
        visited = torch.stack([grouped.window_timesteps(k)[group] for k in range(steps)])
        assert (visited >= group * width).all() and (visited < (group + 1) * width).all()  # its training band
        assert (visited.diff() < 0).all()
    assert torch.equal(torch.cat([end[:1], start]), phase_boundaries(NUM_GROUPS, num_train_timesteps(scheduler)))
    with pytest.raises(ValueError, match="inner_step"):
        grouped.window_timesteps(steps + 1)


@pytest.mark.parametrize("num_groups, num_steps", [(4, 20), (4, 32), (8, 8), (8, 16), (8, 48), (5, 10), (40, 80)])
def test_every_window_of_the_grid_is_one_training_draws_whatever_the_band_width(scheduler, num_groups, num_steps):
    """Group g at u + g * T/G with one u in [0, T/G), as grouped_training_timesteps draws, at every inner step:
    also where T/G is odd (8 groups: 125), where CogVideoX's grid rounds half steps to even, band by band."""
    grouped = GroupedInferenceSchedule(scheduler, num_steps, num_groups)
    width = num_train_timesteps(scheduler) // num_groups
    for step in range(grouped.steps_per_band):
        window = grouped.window_timesteps(step)
        offset = window[0]
        assert 0 <= offset < width and torch.equal(window, offset + width * torch.arange(num_groups)), (step, window)
    boundaries = phase_boundaries(num_groups, num_train_timesteps(scheduler))
    assert torch.equal(grouped.window_timesteps(grouped.steps_per_band), boundaries[:-1])


def test_a_window_starts_with_each_group_at_the_top_of_its_band(scheduler):
    """The condition frame clean; group g noised to window_timesteps(0)[g], where an outer iteration starts it."""
    grouped = GroupedInferenceSchedule(scheduler, NUM_STEPS, NUM_GROUPS)
    clean, noise = randn(BATCH, FRAMES, *SHAPE, seed=3), randn(BATCH, FRAMES, *SHAPE, seed=4)
    started = grouped.start_window(clean, noise, GROUP_SIZE)
    assert torch.equal(started[:, 0], clean[:, 0])
    tops = expand_group_timesteps(grouped.window_timesteps(0), GROUP_SIZE).expand(BATCH, -1)
    expected = CogVideoXTrainingSchedule(scheduler).add_noise(clean, noise, tops)
    torch.testing.assert_close(started[:, 1:], expected[:, 1:], rtol=0, atol=0)
    width = num_train_timesteps(scheduler) // NUM_GROUPS
    assert torch.equal(tops[0, 1::GROUP_SIZE], (width - 1) + width * torch.arange(NUM_GROUPS))


@pytest.mark.parametrize("zero_terminal_snr, expected", [(True, 1), (False, 0)])
def test_only_a_band_top_without_signal_starts_its_group_from_noise_alone(zero_terminal_snr, expected):
    """Under zero terminal SNR (CogVideoX's) the noisiest group's start keeps nothing of the clean latents, which
    a stream then need not encode; without it every group keeps some."""
    scheduler = CogVideoXDPMScheduler(**dict(TINY["scheduler"], rescale_betas_zero_snr=zero_terminal_snr))
    grouped = GroupedInferenceSchedule(scheduler, NUM_STEPS, NUM_GROUPS)
    assert grouped.pure_noise_groups() == expected
    clean, noise = randn(BATCH, FRAMES, *SHAPE, seed=3), randn(BATCH, FRAMES, *SHAPE, seed=4)
    other = clean.clone()
    other[:, 1 + (NUM_GROUPS - 1) * GROUP_SIZE :] = 100.0
    started, again = (grouped.start_window(latents, noise, GROUP_SIZE) for latents in (clean, other))
    assert torch.equal(started, again) == bool(expected)


def true_velocity(scheduler, clean, noise, timesteps):
    a = alpha(scheduler, timesteps.clamp(min=0))
    return a.sqrt() * noise - (1 - a).sqrt() * clean


def test_step_matches_diffusers_ddim_frame_by_frame(scheduler):
    grouped = GroupedInferenceSchedule(scheduler, NUM_STEPS, NUM_GROUPS)
    ddim = CogVideoXDDIMScheduler(**TINY["scheduler"])
    ddim.set_timesteps(NUM_STEPS)
    sample, velocity = randn(1, FRAMES, *SHAPE, seed=1), randn(1, FRAMES, *SHAPE, seed=2)
    for inner_step in (0, grouped.steps_per_band - 1):
        now = expand_group_timesteps(grouped.window_timesteps(inner_step), GROUP_SIZE)[None]
        after = expand_group_timesteps(grouped.window_timesteps(inner_step + 1), GROUP_SIZE)[None]
        moved, _ = grouped.step(velocity, sample, now, after)
        assert torch.equal(moved[:, 0], sample[:, 0])  # the condition frame stays put
        for frame in range(1, FRAMES):
            expected = ddim.step(velocity[:, frame], int(now[0, frame]), sample[:, frame], return_dict=False)[0]
            torch.testing.assert_close(moved[:, frame], expected, rtol=1e-5, atol=1e-5)


def test_stream_with_exact_velocity_recovers_every_group(scheduler):
    """From a started window, outer iterations with a perfect model: each emitted group equals its clean latents."""
    grouped = GroupedInferenceSchedule(scheduler, NUM_STEPS, NUM_GROUPS)
    num_emitted = NUM_GROUPS + 2
    clean_groups = [randn(BATCH, GROUP_SIZE, *SHAPE, seed=10 + g) for g in range(num_emitted + NUM_GROUPS)]
    noise_groups = [randn(BATCH, GROUP_SIZE, *SHAPE, seed=100 + g) for g in range(num_emitted + NUM_GROUPS)]
    condition = randn(BATCH, 1, *SHAPE, seed=99)
    window = grouped.start_window(
        torch.cat([condition, *clean_groups[:NUM_GROUPS]], dim=1),
        torch.cat([torch.zeros_like(condition), *noise_groups[:NUM_GROUPS]], dim=1),
        GROUP_SIZE,
    )

    def denoise(window, first_group, now_groups, next_groups):
        clean = torch.cat([window[:, :1], *clean_groups[first_group : first_group + NUM_GROUPS]], dim=1)
        noise = torch.cat(
            [torch.zeros_like(window[:, :1]), *noise_groups[first_group : first_group + NUM_GROUPS]], dim=1
        )
        now = expand_group_timesteps(now_groups, GROUP_SIZE).expand(BATCH, -1)
        after = expand_group_timesteps(next_groups, GROUP_SIZE).expand(BATCH, -1)
        moved, _ = grouped.step(true_velocity(scheduler, clean, noise, now), window, now, after)
        on_path = CogVideoXTrainingSchedule(scheduler).add_noise(clean, noise, after.clamp(min=0))
        noisy = after > 0
        torch.testing.assert_close(moved[:, 1:][noisy[:, 1:]], on_path[:, 1:][noisy[:, 1:]], rtol=0, atol=1e-4)
        return moved

    for emitted in range(num_emitted):
        for k in range(grouped.steps_per_band):
            window = denoise(window, emitted, grouped.window_timesteps(k), grouped.window_timesteps(k + 1))
        group_zero = window[:, 1 : 1 + GROUP_SIZE]
        torch.testing.assert_close(group_zero, clean_groups[emitted], rtol=0, atol=1e-4)
        window = torch.cat([group_zero[:, -1:], window[:, 1 + GROUP_SIZE :], noise_groups[emitted + NUM_GROUPS]], dim=1)


# ---------------------------------------------------------------- SCM phases
def test_phase_boundaries_and_consistency_scalings():
    boundaries = phase_boundaries(NUM_GROUPS, 1000)
    assert boundaries.tolist() == [-1, 249, 499, 749, 999]
    timesteps = torch.tensor([0, 249, 250, 600, 999])
    assert phase_boundary_below(timesteps, boundaries).tolist() == [-1, -1, 249, 499, 749]
    torch.testing.assert_close(c_skip(boundaries, boundaries), torch.ones(NUM_GROUPS + 1))
    torch.testing.assert_close(c_out(boundaries, boundaries), torch.zeros(NUM_GROUPS + 1))
    below = phase_boundary_below(timesteps, boundaries)
    skip, out = c_skip(timesteps, below), c_out(timesteps, below)
    assert skip.dtype == torch.float32 and (skip < 1e-2).all() and (out > 0.99).all()
    assert (skip.diff() != 0).any()  # they depend on the distance to the boundary
    with pytest.raises(ValueError, match="must divide 1000"):
        phase_boundaries(3, 1000)


def test_a_timestep_outside_every_phase_has_no_boundary_below_it():
    """The clean end (-1) and timesteps past the last boundary are refused, not wrapped round to the last boundary."""
    boundaries = phase_boundaries(NUM_GROUPS, 1000)
    assert phase_boundary_below(torch.tensor([0, 999]), boundaries).tolist() == [-1, 749]
    for outside in (CLEAN_TIMESTEP, 1000):
        with pytest.raises(ValueError, match=rf"timesteps \[{outside}\] lie outside the phases \(-1, 999\]"):
            phase_boundary_below(torch.tensor([0, outside, 500]), boundaries)


def training_timesteps(scheduler, exponent: float, draws: int = 4000) -> torch.Tensor:
    """``draws`` timesteps of stages 1-2's draw (``Trainer.sample_timesteps``) at ``exponent``, from one generator."""
    trainer = Trainer.__new__(Trainer)
    trainer.args, trainer.scheduler = TrainingArgs(timestep_density_exponent=exponent), scheduler
    generator = torch.Generator().manual_seed(0)
    return torch.cat([trainer.sample_timesteps(1, generator) for _ in range(draws)])


def test_timestep_density_exponent_one_is_the_uniform_draw(scheduler):
    generator = torch.Generator().manual_seed(0)
    expected = torch.cat(
        [torch.randint(0, num_train_timesteps(scheduler), (1,), generator=generator) for _ in range(4000)]
    )
    assert torch.equal(training_timesteps(scheduler, 1.0), expected)


def test_a_larger_timestep_density_exponent_draws_more_high_noise_timesteps(scheduler):
    total = num_train_timesteps(scheduler)
    timesteps = training_timesteps(scheduler, 3.0)
    assert timesteps.dtype == torch.long and 0 <= timesteps.min() and timesteps.max() < total
    # Density proportional to t^2: mean 3/4 of the schedule, 1/8 of the draws in its lower half (uniform: 1/2, 1/2).
    assert timesteps.float().mean() / total == pytest.approx(0.75, abs=0.02)
    assert (timesteps < total / 2).float().mean() == pytest.approx(0.125, abs=0.02)


def test_timestep_density_exponent_must_be_positive():
    with pytest.raises(ConfigError, match="timestep_density_exponent must be above 0"):
        TrainingArgs(timestep_density_exponent=0.0).check()
