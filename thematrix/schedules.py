"""Noise-schedule utilities shared by every stage: CogVideoX training, Swin-DPM grouped timesteps, SCM phases.

Everything reads CogVideoX's noise levels, ``alpha_bar_t = scheduler.alphas_cumprod[t]`` (SNR-shifted,
zero terminal SNR), from a diffusers ``CogVideoXDPMScheduler``; nothing here re-derives them.

Conventions:
- latents are ``[B, F, C, H, W]`` (the transformer's layout); timesteps are ``[B]`` (one per sample) or
  ``[B, F]`` (one per latent frame);
- timestep ``CLEAN_TIMESTEP`` (-1) is the clean end of the chain, ``alpha_bar = final_alpha_cumprod``
  (1 for CogVideoX), as in diffusers' ``step``;
- a Swin-DPM window is ``1 + G * W`` latent frames: the condition frame (timestep 0), then G groups of W
  frames, group 0 the least noisy (the oldest) and group G - 1 the noisiest.
"""

from __future__ import annotations

import torch
from diffusers import CogVideoXDPMScheduler

from thematrix.devices import copy_to_device

CLEAN_TIMESTEP = -1
CONDITION_TIMESTEP = 0
# [B, F, C, H, W]
LATENT_NDIM = 5
# LCMScheduler's boundary-condition constants (sigma_data, config.timestep_scaling).
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def alpha_bar(scheduler: CogVideoXDPMScheduler, timesteps: torch.Tensor, ndim: int = LATENT_NDIM) -> torch.Tensor:
    """``alpha_bar_t`` per timestep (``final_alpha_cumprod`` where t < 0), float64, shaped to broadcast
    over a tensor of rank ``ndim`` whose leading dims are ``timesteps.shape``."""
    alphas_cumprod = copy_to_device(scheduler.alphas_cumprod.to(torch.float64), timesteps.device)
    final = float(scheduler.final_alpha_cumprod)  # a Python number: no copy to the device
    values = torch.where(timesteps >= 0, alphas_cumprod[timesteps.clamp(min=0)], final)
    return values.reshape(*timesteps.shape, *(1,) * (ndim - timesteps.ndim))


def band_width(num_groups: int, num_train_timesteps: int) -> int:
    """T / G: the timestep span of one Swin-DPM noise band (= one SCM phase)."""
    if num_groups < 1 or num_train_timesteps % num_groups:
        raise ValueError(
            f"{num_groups} noise groups do not split the {num_train_timesteps} training timesteps into bands of "
            f"equal width: the number of groups must divide {num_train_timesteps}, e.g. one of "
            f"{valid_group_counts(num_train_timesteps)}"
        )
    return num_train_timesteps // num_groups


def valid_group_counts(num_train_timesteps: int) -> list[int]:
    """The numbers of noise groups G that split T training timesteps into equal bands: the divisors of T."""
    return [count for count in range(1, num_train_timesteps + 1) if num_train_timesteps % count == 0]


class CogVideoXTrainingSchedule:
    """CogVideoX's training arithmetic on a diffusers scheduler, for per-sample or per-frame timesteps.

    diffusers' ``add_noise``/``get_velocity`` broadcast one timestep per sample; with ``[B, F]`` timesteps
    the frames are folded into the batch, so the result is diffusers' own, frame by frame.
    """

    def __init__(self, scheduler: CogVideoXDPMScheduler):
        self.scheduler = scheduler

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * noise."""
        return self._per_frame(self.scheduler.add_noise, latents, noise, timesteps)

    def velocity_to_sample(
        self, model_output: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x_0 = sqrt(alpha_bar_t) * x_t - sqrt(1 - alpha_bar_t) * v, for a v-prediction ``model_output``.

        This is ``get_velocity(model_output, noisy, t)``, the way CogVideoX's training turns the prediction
        into x_0 before its loss.
        """
        return self._per_frame(self.scheduler.get_velocity, model_output, noisy, timesteps)

    def loss_weight(self, timesteps: torch.Tensor, ndim: int = LATENT_NDIM) -> torch.Tensor:
        """w_t = 1 / (1 - alpha_bar_t), float32, shaped to broadcast over rank-``ndim`` latents.

        CogVideoX's weight of the x_0 loss; with v-prediction it makes the loss the v-space MSE.
        """
        return (1 / (1 - alpha_bar(self.scheduler, timesteps, ndim))).float()

    @staticmethod
    def _per_frame(function, first: torch.Tensor, second: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Apply a diffusers per-sample ``function(a, b, t)`` with [B] or [B, F] timesteps to [B, F, ...] tensors."""
        batch_frames = first.shape[:2]
        if timesteps.shape not in (batch_frames[:1], batch_frames):
            raise ValueError(
                f"timesteps must have shape [B] or [B, F] = {list(batch_frames)} for latents [B, F, C, H, W] of "
                f"shape {list(first.shape)}, got {list(timesteps.shape)}."
            )
        frame_timesteps = timesteps.reshape(batch_frames[0], -1).expand(batch_frames)
        result = function(first.flatten(0, 1), second.flatten(0, 1), frame_timesteps.flatten())
        return result.unflatten(0, batch_frames)


def expand_group_timesteps(group_timesteps: torch.Tensor, group_size: int) -> torch.Tensor:
    """[..., G] timesteps per group -> [..., 1 + G * W] per latent frame, condition frame first at timestep 0."""
    condition = torch.full_like(group_timesteps[..., :1], CONDITION_TIMESTEP)
    return torch.cat([condition, group_timesteps.repeat_interleave(group_size, dim=-1)], dim=-1)


def grouped_training_timesteps(
    batch_size: int,
    num_groups: int,
    group_size: int,
    num_train_timesteps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Swin-DPM training timesteps, LongTensor [B, 1 + G * W].

    Per sample draw u ~ U{0, ..., T/G - 1}; every frame of group g gets u + g * T/G, the condition frame 0.
    So group g lies in band [g * T/G, (g + 1) * T/G) and consecutive groups differ by exactly T/G, as the
    window's groups do at every inner step of sampling.
    """
    width = band_width(num_groups, num_train_timesteps)
    device = generator.device if generator is not None else None
    offset = torch.randint(0, width, (batch_size, 1), generator=generator, device=device)
    group_timesteps = offset + width * torch.arange(num_groups, device=device)
    return expand_group_timesteps(group_timesteps, group_size)


class GroupedInferenceSchedule:
    """Swin-DPM sampling: N timesteps split into G bands, one band per group of the sliding window.

    The N timesteps, descending, followed by ``CLEAN_TIMESTEP``: ``timesteps[i]``, i = 0..N. With S = N / G
    steps per band, band g holds indices ``[(G - 1 - g) * S, (G - g) * S)`` so band 0 is the least noisy and
    band G - 1 starts at pure noise. Band 0's S timesteps are CogVideoX's own (``set_timesteps(N)`` of a copy
    of ``scheduler``: trailing spacing, 249 ... 49 of 999 ... 49 for N = 20, G = 4); band g holds them plus
    g * T/G. That is CogVideoX's whole grid where T/G is even; where it is odd, set_timesteps' rounding of
    half steps (to even) would put some bands one timestep off, in windows training never draws.

    Outer iteration: at inner step k (0..S) group g sits at index ``(G - 1 - g) * S + k``. After S inner
    steps each group has crossed its band into the top of the next cleaner one, and group 0 is at index N,
    clean: emit it, shift the window (group g + 1 becomes group g, already at the top of band g) and append
    pure noise as group G - 1. Band edges are ``phase_boundaries`` (the SCM phases).

    Every window the transformer sees is one training draws (``grouped_training_timesteps``): with trailing
    spacing group g's timestep at inner step k is u + g * T/G with u = ``timesteps[(G - 1) * S + k]`` < T/G.
    A stream starts the same way: ``start_window`` noises the clean latents of an initial clip to the band
    tops, the window of inner step 0.

    Per-frame timesteps for the transformer and ``step``: ``expand_group_timesteps(window_timesteps(k), W)``
    (k < S for a forward; k = S only as the target of the last inner step).
    """

    def __init__(self, scheduler: CogVideoXDPMScheduler, num_inference_steps: int, num_groups: int):
        self.check_steps(num_inference_steps, num_groups)
        width = band_width(num_groups, scheduler.config.num_train_timesteps)
        self.scheduler = type(scheduler).from_config(scheduler.config)
        self.scheduler.set_timesteps(num_inference_steps)
        self.num_groups = num_groups
        self.steps_per_band = num_inference_steps // num_groups
        lowest_band = self.scheduler.timesteps[-self.steps_per_band :].long()
        bands = [lowest_band + band * width for band in reversed(range(num_groups))]
        self.timesteps = torch.cat([*bands, torch.tensor([CLEAN_TIMESTEP])])
        # Index of each group's band top, group 0 first.
        self._band_starts = (num_groups - 1 - torch.arange(num_groups)) * self.steps_per_band

    @staticmethod
    def check_steps(num_inference_steps: int, num_groups: int) -> None:
        """Refuse N that does not split into G bands of N / G steps."""
        if num_inference_steps % num_groups:
            raise ValueError(
                f"num_inference_steps ({num_inference_steps}) must be divisible by num_groups ({num_groups}): each "
                f"group moves one band of N / G steps per outer iteration; use e.g. "
                f"{num_groups * max(1, round(num_inference_steps / num_groups))}."
            )

    def window_timesteps(self, inner_step: int) -> torch.Tensor:
        """LongTensor [G]: each group's timestep at ``inner_step`` k of an outer iteration (0 <= k <= N/G)."""
        _check_step("inner_step", inner_step, self.steps_per_band)
        return self.timesteps[self._band_starts + inner_step]

    def pure_noise_groups(self) -> int:
        """How many of the last groups ``start_window`` sets to its noise alone, whatever the clean latents: those
        whose band top has alpha_bar 0 (band G - 1 under zero terminal SNR, as CogVideoX's). A stream need not
        encode their frames."""
        tops = alpha_bar(self.scheduler, self.window_timesteps(0), ndim=1)
        noised_away = (tops == 0).flip(0).long()
        return int(noised_away.cumprod(0).sum())

    def start_window(self, clean: torch.Tensor, noise: torch.Tensor, group_size: int) -> torch.Tensor:
        """The window of clean latents ``[B, 1 + G * W, C, H, W]`` as an outer iteration starts it: the condition
        frame clean, every frame of group g noised with ``noise`` to the top of band g (``window_timesteps(0)``)."""
        timesteps = expand_group_timesteps(self.window_timesteps(0), group_size).to(clean.device)
        noisy = CogVideoXTrainingSchedule(self.scheduler).add_noise(clean, noise, timesteps.expand(clean.shape[0], -1))
        condition = (timesteps == CONDITION_TIMESTEP).reshape(1, -1, *(1,) * (clean.ndim - 2))
        return torch.where(condition, clean, noisy)

    def step(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        timesteps_now: torch.Tensor,
        timesteps_next: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic DDIM (eta = 0) update over per-frame timesteps; returns (x_next, predicted x_0).

        With a = alpha_bar(t_now), a' = alpha_bar(t_next) per frame (timesteps [B] or [B, F]):
        x_0 = sqrt(a) x - sqrt(1 - a) v, eps = sqrt(1 - a) x + sqrt(a) v, x_next = sqrt(a') x_0 + sqrt(1 - a') eps.
        Frames with t_next == t_now (the condition frame) are returned unchanged.

        First order on purpose: CogVideoX's scheduler step is a stochastic DPM-Solver++(2M) that needs each
        frame's x_0 from its previous timestep, which a group entering the window does not have, and adds
        fresh noise. DDIM needs no history, moves every frame by its own timesteps, and is exact when the
        prediction is exact.
        """
        compute_dtype = torch.promote_types(sample.dtype, torch.float32)
        now = alpha_bar(self.scheduler, timesteps_now, sample.ndim).to(compute_dtype)
        after = alpha_bar(self.scheduler, timesteps_next, sample.ndim).to(compute_dtype)
        x, v = sample.to(compute_dtype), model_output.to(compute_dtype)
        pred_original = now.sqrt() * x - (1 - now).sqrt() * v
        pred_noise = (1 - now).sqrt() * x + now.sqrt() * v
        moved = after.sqrt() * pred_original + (1 - after).sqrt() * pred_noise
        still = (timesteps_now == timesteps_next).reshape(now.shape)
        prev_sample = torch.where(still, x, moved)
        return prev_sample.to(sample.dtype), pred_original.to(sample.dtype)


def _check_step(name: str, step: int, last: int) -> None:
    if not 0 <= step <= last:
        raise ValueError(f"{name} must be in [0, {last}], got {step}.")


def phase_boundaries(num_groups: int, num_train_timesteps: int) -> torch.Tensor:
    """SCM phase edges, LongTensor [G + 1]: b_k = k * T/G - 1 for k = 0..G ([-1, 249, 499, 749, 999] for G=4).

    Phase k holds timesteps (b_k, b_{k+1}] = [k T/G, (k + 1) T/G), group k's training band; b_0 = -1 is
    clean. With trailing spacing these are exactly the timesteps where ``GroupedInferenceSchedule`` leaves
    the groups after each outer iteration, so one student forward per iteration lands on them.
    """
    width = band_width(num_groups, num_train_timesteps)
    return torch.arange(num_groups + 1) * width + CLEAN_TIMESTEP


def phase_boundary_below(timesteps: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """The boundary b_k of each timestep's phase (b_k < t <= b_{k+1}, 0 <= t < T): where its consistency
    function lands. A timestep outside every phase (the clean end b_0 = -1 itself, or t >= T) is refused: it
    has no boundary below it, and the index lookup would wrap around to the last one."""
    boundaries = boundaries.to(timesteps.device)
    lowest, highest = int(boundaries[0]), int(boundaries[-1])
    outside = (timesteps <= lowest) | (timesteps > highest)
    if outside.any():
        raise ValueError(
            f"timesteps {timesteps[outside].unique().tolist()} lie outside the phases ({lowest}, {highest}]: a "
            f"timestep with a phase boundary below it is one of {lowest + 1}..{highest}"
        )
    return boundaries[torch.searchsorted(boundaries, timesteps) - 1]


def c_skip(
    timesteps: torch.Tensor,
    boundary: torch.Tensor,
    sigma_data: float = SIGMA_DATA,
    timestep_scaling: float = TIMESTEP_SCALING,
) -> torch.Tensor:
    """c_skip = sigma_data^2 / ((s (t - b))^2 + sigma_data^2): LCM's scaling, t measured from the phase
    boundary b (s = timestep_scaling). 1 at t == b, so the consistency function is the identity there."""
    scaled = _scaled_distance(timesteps, boundary, timestep_scaling)
    return sigma_data**2 / (scaled**2 + sigma_data**2)


def c_out(
    timesteps: torch.Tensor,
    boundary: torch.Tensor,
    sigma_data: float = SIGMA_DATA,
    timestep_scaling: float = TIMESTEP_SCALING,
) -> torch.Tensor:
    """c_out = s (t - b) / sqrt((s (t - b))^2 + sigma_data^2): LCM's scaling from the phase boundary b;
    0 at t == b. Consistency output: f(x_t, t) = c_skip * x_t + c_out * x_0-prediction."""
    scaled = _scaled_distance(timesteps, boundary, timestep_scaling)
    return scaled / (scaled**2 + sigma_data**2).sqrt()


def _scaled_distance(timesteps, boundary, timestep_scaling: float) -> torch.Tensor:
    """s * (t - b) as float32, so the scalings multiply float32 latents without promoting them."""
    return (torch.as_tensor(timesteps) - torch.as_tensor(boundary)).float() * timestep_scaling
