"""Where the footage shows its controls: the explained-share map and the loss weights it gives."""

from __future__ import annotations

import pytest
import torch

from thematrix.training.control_relevance import relevance_map, relevance_weights

FRAMES, CHANNELS, HEIGHT, WIDTH, TOKENS = 60, 3, 4, 5, 3
SHOWN_AT = (1, 2)  # the one latent position whose values the controls set


def footage(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents [F, C, h, w] of noise, plus at SHOWN_AT an offset that depends on the frame's control token."""
    generator = torch.Generator().manual_seed(seed)
    controls = torch.randint(TOKENS, (FRAMES,), generator=generator)
    latents = torch.randn(FRAMES, CHANNELS, HEIGHT, WIDTH, generator=generator)
    latents[:, :, SHOWN_AT[0], SHOWN_AT[1]] += 5.0 * controls[:, None].float()
    return latents, controls


def direct_share(latents: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
    """The map computed from all frames at once: sums of squares between token means over total, per position."""
    values = latents.double()
    mean = values.mean(dim=0)
    total = ((values - mean) ** 2).sum(dim=(0, 1))
    between = sum(
        (controls == token).sum() * ((values[controls == token].mean(dim=0) - mean) ** 2).sum(dim=0)
        for token in controls.unique()
    )
    return (between / total).float()


def test_the_map_is_the_share_the_control_tokens_explain_at_each_position():
    latents, controls = footage()
    relevance = relevance_map([(latents, controls)])
    torch.testing.assert_close(relevance, direct_share(latents, controls), rtol=1e-5, atol=1e-6)
    assert relevance[SHOWN_AT] > 0.9
    others = torch.ones(HEIGHT, WIDTH, dtype=torch.bool)
    others[SHOWN_AT] = False
    assert relevance[others].max() < 0.2


def test_clips_given_apart_give_the_map_of_their_frames_together():
    clips = [footage(seed) for seed in range(3)]
    together = (torch.cat([latents for latents, _ in clips]), torch.cat([controls for _, controls in clips]))
    torch.testing.assert_close(relevance_map(clips), relevance_map([together]), rtol=1e-5, atol=1e-6)


def test_positions_that_never_vary_explain_nothing_and_no_clips_is_an_error():
    latents, controls = footage()
    latents[:, :, 0, 0] = 1.0
    assert relevance_map([(latents, controls)])[0, 0] == 0
    with pytest.raises(ValueError, match="no clips"):
        relevance_map([])


def test_weights_have_mean_one_and_weigh_the_controls_positions_by_the_strength():
    relevance = torch.tensor([[0.0, 0.2], [0.0, 0.6]])  # mean 0.2
    assert torch.equal(relevance_weights(relevance, 0.0), torch.ones(2, 2))
    weights = relevance_weights(relevance, 3.0)
    torch.testing.assert_close(weights.mean(), torch.tensor(1.0))
    torch.testing.assert_close(weights[0, 1] / weights[0, 0], torch.tensor(4.0))  # the mean share: 1 + s
    torch.testing.assert_close(weights[1, 1] / weights[0, 0], torch.tensor(10.0))  # three times it: 1 + 3s
    assert torch.equal(relevance_weights(torch.zeros(2, 2), 3.0), torch.ones(2, 2))
    with pytest.raises(ValueError, match="0 or more"):
        relevance_weights(relevance, -1.0)
