"""Streaming VAE decode: chunk by chunk it equals diffusers' whole decode, with flat memory."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX

from thematrix.presets import TINY
from thematrix.streaming_vae import StreamingDecoder, first_batch_size

LATENT_FRAMES, LATENT_HEIGHT, LATENT_WIDTH = 9, 4, 6


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLCogVideoX:
    torch.manual_seed(0)
    return AutoencoderKLCogVideoX(**TINY["vae"]).eval()


def latents(num_frames: int = LATENT_FRAMES, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """Scaled latents in the transformer's layout [B, F, C, h, w]."""
    shape = (batch, num_frames, TINY["vae"]["latent_channels"], LATENT_HEIGHT, LATENT_WIDTH)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def whole_decode(vae, scaled_latents: torch.Tensor) -> torch.Tensor:
    """What CogVideoXPipeline.decode_latents does, as [B, F, 3, H, W]."""
    with torch.no_grad():
        video = vae.decode(1 / vae.config.scaling_factor * scaled_latents.permute(0, 2, 1, 3, 4)).sample
    return video.permute(0, 2, 1, 3, 4)


def stream(decoder: StreamingDecoder, scaled_latents: torch.Tensor, chunk_size: int) -> list[torch.Tensor]:
    return [decoder.decode(chunk) for chunk in scaled_latents.split(chunk_size, dim=1)]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, LATENT_FRAMES])
def test_streaming_decode_matches_whole_decode(vae, chunk_size):
    full = latents(batch=2)
    expected = whole_decode(vae, full)
    temporal = vae.config.temporal_compression_ratio
    assert expected.shape[1] == temporal * (LATENT_FRAMES - 1) + 1
    pieces = stream(StreamingDecoder(vae), full, chunk_size)
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, rtol=0, atol=1e-5)


def test_frames_come_out_as_soon_as_a_batch_is_complete(vae):
    """diffusers' batches: 3 latent frames first (the causal first frame + a pair), then pairs."""
    temporal = vae.config.temporal_compression_ratio
    pieces = stream(StreamingDecoder(vae), latents(), 1)
    pair = vae.num_latent_frames_batch_size * temporal
    assert [piece.shape[1] for piece in pieces] == [0, 0, 1 + pair, 0, pair, 0, pair, 0, pair]
    assert all(piece.shape[2:] == pieces[2].shape[2:] for piece in pieces)
    # The Swin-DPM stream: the first batch (history and condition latents) primes the decoder, then each group
    # of 4 latent frames comes out whole at once.
    decoder, group = StreamingDecoder(vae), 4
    first = first_batch_size(vae)
    full = latents(first + 2 * group)
    chunks = (full[:, :first], full[:, first : first + group], full[:, first + group :])
    assert [decoder.decode(chunk).shape[1] for chunk in chunks] == [1 + pair, temporal * group, temporal * group]


def test_two_streams_in_a_row_after_reset(vae):
    decoder = StreamingDecoder(vae)
    first, second = latents(seed=1), latents(5, seed=2)
    for scaled_latents, chunk_size in ((first, 2), (second, 3)):
        streamed = torch.cat(stream(decoder, scaled_latents, chunk_size), dim=1)
        torch.testing.assert_close(streamed, whole_decode(vae, scaled_latents), rtol=0, atol=1e-5)
        decoder.reset()


def test_without_reset_the_next_stream_continues_the_cache(vae):
    decoder = StreamingDecoder(vae)
    stream(decoder, latents(seed=1), 2)
    continued = torch.cat(stream(decoder, latents(seed=2), 2), dim=1)
    assert continued.shape[1] == vae.config.temporal_compression_ratio * (LATENT_FRAMES - 1)  # no causal first frame
    fresh = whole_decode(vae, latents(seed=2))
    assert (continued - fresh[:, 1:]).abs().max() > 1e-3


def test_cache_does_not_grow_with_the_stream(vae):
    decoder = StreamingDecoder(vae)
    decoder.decode(latents(1))
    held = []
    for num_chunks in range(1, 41):
        decoder.decode(latents(2, seed=num_chunks))
        if num_chunks in (5, 40):
            held.append(decoder.state_nbytes())
    assert held[0] == held[1] > 0


def test_tiled_streaming_matches_tiled_whole_decode(vae):
    # Tile sizes whose overlaps are whole latent pixels, so diffusers' tiled decode keeps the frame size.
    vae.enable_tiling(
        tile_sample_min_height=32,
        tile_sample_min_width=32,
        tile_overlap_factor_height=0.25,
        tile_overlap_factor_width=0.25,
    )
    try:
        full = latents()
        expected = whole_decode(vae, full)
        pieces = stream(StreamingDecoder(vae), full, 3)
    finally:
        vae.disable_tiling()
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, rtol=0, atol=1e-5)
    assert (expected - whole_decode(vae, full)).abs().max() > 1e-4  # the tiled path was really taken


def test_flush_decodes_a_stream_shorter_than_one_batch(vae):
    decoder = StreamingDecoder(vae)
    single = latents(1)
    assert decoder.decode(single).shape[1] == 0
    torch.testing.assert_close(decoder.flush(), whole_decode(vae, single), rtol=0, atol=1e-5)
    assert decoder.state_nbytes() == 0


def test_channels_first_latents_are_refused(vae):
    with pytest.raises(ValueError, match=r"\[B, F, C=4, h, w\]"):
        StreamingDecoder(vae).decode(latents().permute(0, 2, 1, 3, 4))
