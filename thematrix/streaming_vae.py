"""Incremental decoding with the CogVideoX VAE, so a stream shows frames as soon as they are generated.

The CogVideoX decoder is causal in time: diffusers' ``vae.decode`` already splits the latent frames
into batches and carries each causal convolution's last input frames (its ``conv_cache``) from one
batch to the next. ``StreamingDecoder`` keeps that cache across calls instead of across a loop.

Its output equals ``vae.decode`` of all latents only if it decodes the very same batches, because the
decoder is not frame-local: its GroupNorms take statistics over every frame of a batch, and its time
upsamplers treat an odd-length batch's first frame as the causal first frame (1 video frame instead of
``temporal_compression_ratio``). diffusers decodes F latent frames as a first batch of
``fbs + F % fbs`` frames and then batches of ``fbs`` (``fbs = vae.num_latent_frames_batch_size``, 2).
CogVideoX videos have 4k+1 frames, so F is odd and the first batch is 3 latent frames -> 9 video
frames, each later pair -> 8: 4*(F-1)+1 frames in all. The decoder therefore buffers latent frames
until a whole batch is there: feed a first batch (``first_batch_size`` latent frames; the Swin-DPM
stream primes the decoder with the latents before its first group), then every generated group, and
each group of an even number of frames comes out whole as soon as it is fed.

Tiling and slicing come from diffusers too: each batch goes through ``vae.decode``, so
``vae.enable_tiling()`` decodes each batch in overlapping spatial tiles, each tile with its own cache.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLCogVideoX

# The first latent frame of a stream is decoded as the causal first frame; see the module docstring.
CAUSAL_FIRST_FRAMES = 1


def first_batch_size(vae: AutoencoderKLCogVideoX) -> int:
    """Latent frames of diffusers' first decode batch of a stream: ``fbs + 1 % fbs`` (3 for CogVideoX)."""
    frame_batch_size = vae.num_latent_frames_batch_size
    return frame_batch_size + CAUSAL_FIRST_FRAMES % frame_batch_size


class StreamingDecoder:
    """Decode ``[B, F, C, h, w]`` scaled latents chunk by chunk into ``[B, F_out, 3, H, W]`` video in [-1, 1].

    Concatenating the outputs of ``decode`` over a stream equals ``vae.decode`` of all its latents when
    the stream's length F satisfies ``F % fbs == 1 % fbs`` (odd F for CogVideoX), whatever the chunk
    sizes. Memory stays flat: between calls it holds one conv cache per decoder call of a batch (one per
    spatial tile and batch slice) and fewer latent frames than one batch. Inference only: no autograd
    graph is kept.
    """

    def __init__(self, vae: AutoencoderKLCogVideoX):
        self.vae = vae
        self.frame_batch_size = vae.num_latent_frames_batch_size
        self.first_batch_size = first_batch_size(vae)
        self.spatial_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.reset()

    def reset(self) -> None:
        """Start a new stream: forget the pending latent frames and the convolution caches."""
        self._pending: torch.Tensor | None = None  # [B, C, f, h, w], f < one batch
        self._latent_shape: tuple[int, int, int] = (0, 0, 0)  # (B, h, w) of the stream
        self._caches: list[dict] = []  # one conv cache per decoder call of a batch, in call order
        self._started = False

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next ``latents`` [B, F_chunk, C, h, w]; returns the video frames now complete.

        Frames short of a whole batch wait for the next call, so a call may return 0 frames.
        """
        latent_channels = self.vae.config.latent_channels
        if latents.ndim != 5 or latents.shape[2] != latent_channels:
            raise ValueError(
                f"StreamingDecoder.decode expects latents [B, F, C={latent_channels}, h, w] (the transformer's "
                f"layout), got shape {tuple(latents.shape)}; permute [B, C, F, h, w] latents with "
                f".permute(0, 2, 1, 3, 4)."
            )
        self._latent_shape = (latents.shape[0], *latents.shape[-2:])
        # Unscaled as CogVideoXPipeline.decode_latents does it.
        z = (1 / self.vae.config.scaling_factor * latents.permute(0, 2, 1, 3, 4)).to(self.vae.dtype)
        pending = z if self._pending is None else torch.cat([self._pending, z], dim=2)
        videos = []
        while pending.shape[2] >= self._next_batch_size():
            batch_size = self._next_batch_size()
            videos.append(self._decode_batch(pending[:, :, :batch_size]))
            pending = pending[:, :, batch_size:]
        self._pending = pending.clone() if pending.shape[2] else None  # clone: drop the rest of the chunk
        return self._as_frames(videos)

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """Decode the pending latent frames as a last, short batch and end the stream (``reset``).

        Matches ``vae.decode`` when the whole stream is shorter than the first batch (e.g. one latent frame). A stream of F % fbs == 1 % fbs frames has nothing pending; any other length shares
        no batching with ``vae.decode``, so its last frames cannot match it.
        """
        videos = [self._decode_batch(self._pending)] if self._pending is not None else []
        frames = self._as_frames(videos)
        self.reset()
        return frames

    def state_nbytes(self) -> int:
        """Bytes held between calls (conv caches and pending latents): constant over a stream."""
        tensors = _tensors_in(self._caches) + ([self._pending] if self._pending is not None else [])
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)

    def _next_batch_size(self) -> int:
        return self.frame_batch_size if self._started else self.first_batch_size

    def _decode_batch(self, z: torch.Tensor) -> torch.Tensor:
        """``vae.decode`` of one batch [B, C, f, h, w], continuing the stream's conv caches.

        A batch shorter than two ``fbs`` makes exactly one decoder call per tile and slice, each starting
        from ``conv_cache=None``; hooks swap in the cache of the same call in the previous batch and keep
        the cache it returns.
        """
        call_index = 0

        def continue_cache(module, args, kwargs):
            kwargs["conv_cache"] = self._caches[call_index] if call_index < len(self._caches) else None
            return args, kwargs

        def keep_cache(module, args, output):
            nonlocal call_index
            _, new_cache = output
            if call_index < len(self._caches):
                self._caches[call_index] = new_cache
            else:
                self._caches.append(new_cache)
            call_index += 1

        handles = [
            self.vae.decoder.register_forward_pre_hook(continue_cache, with_kwargs=True),
            self.vae.decoder.register_forward_hook(keep_cache),
        ]
        try:
            video = self.vae.decode(z).sample
        finally:
            for handle in handles:
                handle.remove()
        self._started = True
        return video

    def _as_frames(self, videos: list[torch.Tensor]) -> torch.Tensor:
        """[B, C, f, H, W] pieces -> one [B, f, C, H, W] tensor; empty (f = 0) when nothing was decoded."""
        if not videos:
            batch, height, width = self._latent_shape
            shape = (batch, 0, self.vae.config.out_channels, height * self.spatial_scale, width * self.spatial_scale)
            return torch.zeros(shape, dtype=self.vae.dtype, device=self.vae.device)
        return torch.cat(videos, dim=2).permute(0, 2, 1, 3, 4)


def _tensors_in(tree) -> list[torch.Tensor]:
    """Every tensor in nested dicts/lists (the decoder's conv-cache structure)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    values = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (list, tuple)) else []
    return [tensor for value in values for tensor in _tensors_in(value)]
