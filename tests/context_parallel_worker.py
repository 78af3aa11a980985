"""Run by tests/test_context_parallel.py under torchrun, in CPU processes over gloo: the tiny stage-3 model's forward
and stream on one process, then with context parallelism over all of them (rank 0 alone holding the VAE, as the
inference front ends place it), overlapped, on frames whose tokens do not split evenly, and with compiled blocks;
each rank saves them with the count of its VAE encodes and decodes."""

from __future__ import annotations

import sys
from collections import Counter

import torch
import torch.distributed as dist
from diffusers import AutoencoderKLCogVideoX

from stage3.cogvideox.pipeline_cogvideox import SwinDPMPipeline, window_clip_frames
from tests.conftest import TINY_HEIGHT
from tests.test_acceleration import TEST_BACKEND
from tests.test_stage3_stream import GROUP_SIZE, NUM_GROUPS, initial_clip, stream
from thematrix.acceleration import compile_blocks
from thematrix.parallel import enable_context_parallel
from thematrix.streaming_vae import StreamingDecoder

FRAMES, CHANNELS, HEIGHT, WIDTH = 5, 4, 6, 8  # latents of the tiny model: 12 tokens per frame
TIMESTEPS = [[0, 100, 100, 600, 600]]  # a Swin-DPM window's per-frame timesteps
CONTROLS = [[0, 1, 0, 1, 1]]
# Square frames of the tiny model: 3x3 patches, 9 tokens per frame, which 2 ranks split 5 + 4.
UNEVEN_SIZE = TINY_HEIGHT
SQUARE_LATENTS = (HEIGHT, HEIGHT)  # 3x3 patches of the tiny model's latents: 9 tokens per frame
VAE_CALLS = Counter()


def count_calls(owner, name: str) -> None:
    """Count ``owner.name``'s calls in ``VAE_CALLS``."""
    method = getattr(owner, name)

    def counted(*args, **kwargs):
        VAE_CALLS[name] += 1
        return method(*args, **kwargs)

    setattr(owner, name, counted)


def all_gather_by_broadcasts(tensor_list: list[torch.Tensor], tensor: torch.Tensor, group=None) -> None:
    """``dist.all_gather`` of tensors whose sizes differ between ranks, as NCCL's runs it (a broadcast from each
    rank): gloo's takes equal sizes only, and diffusers' uneven gather (``ulysses_anything``) passes unequal ones."""
    for source, gathered in enumerate(tensor_list):
        global_source = dist.get_global_rank(group, source) if group is not None else source
        if global_source == dist.get_rank():
            gathered.copy_(tensor)
        dist.broadcast(gathered, src=global_source, group=group)


def forward(pipeline: SwinDPMPipeline, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, FRAMES, CHANNELS, height, width, generator=generator)
    config = pipeline.transformer.config
    text = torch.randn(1, config.max_text_seq_length, config.text_embed_dim, generator=generator)
    with torch.no_grad():
        return pipeline.transformer(latents, text, torch.tensor(TIMESTEPS), torch.tensor(CONTROLS)).sample


def outputs(pipeline: SwinDPMPipeline, **options) -> dict[str, torch.Tensor]:
    """The forward, and the stream's frames and latents with the VAE calls it made (no frames: it yielded none)."""
    VAE_CALLS.clear()
    chunks = list(stream(pipeline, **options))
    results = {"forward": forward(pipeline), "vae_calls": dict(VAE_CALLS)}
    if chunks:
        results["frames"] = torch.cat([chunk.frames for chunk in chunks])
        results["latents"] = torch.cat([chunk.latents for chunk in chunks])
    return results


def parallel_pipeline(model_dir: str, splits_evenly: bool = True) -> SwinDPMPipeline:
    """The pipeline as inference.load_pipeline builds it under context parallelism."""
    pipeline = SwinDPMPipeline.from_model_dir(model_dir, device=torch.device("cpu"), dtype=torch.float32)
    enable_context_parallel(pipeline.transformer, dist.get_world_size(), splits_evenly)
    if dist.get_rank():
        pipeline.place_decoder(None)
    return pipeline


def main(model_dir: str, output_prefix: str) -> None:
    dist.init_process_group("gloo")
    # diffusers gives rank r the accelerator r % device_count; the CPU has none, so it stands as the one.
    torch.accelerator.device_count = lambda: 1
    dist.all_gather = all_gather_by_broadcasts
    count_calls(StreamingDecoder, "decode")
    count_calls(AutoencoderKLCogVideoX, "encode")
    single = SwinDPMPipeline.from_model_dir(model_dir, device=torch.device("cpu"), dtype=torch.float32)
    square = initial_clip(window_clip_frames(single.vae, NUM_GROUPS, GROUP_SIZE), UNEVEN_SIZE, UNEVEN_SIZE)
    results = {"single": outputs(single), "single_uneven": outputs(single, video=square)}

    pipeline = parallel_pipeline(model_dir)
    results["parallel"] = outputs(pipeline)
    results["parallel_overlapped"] = outputs(pipeline, overlap_decode=True)
    compile_blocks(pipeline.transformer, backend=TEST_BACKEND)
    results["compiled"] = {"forward": forward(pipeline)}
    uneven = parallel_pipeline(model_dir, splits_evenly=False)
    results["parallel_uneven"] = outputs(uneven, video=square)
    results["single_uneven"]["forward_square"] = forward(single, *SQUARE_LATENTS)
    compile_blocks(uneven.transformer, backend=TEST_BACKEND)
    results["compiled_uneven"] = {"forward": forward(uneven, *SQUARE_LATENTS)}
    torch.save(results, f"{output_prefix}{dist.get_rank()}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
