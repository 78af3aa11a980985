"""Run by tests/test_context_parallel.py under torchrun, in CPU processes over gloo: the tiny stage-3 model's forward
and stream on one process, then with context parallelism over all of them (and its forward with compiled blocks);
each rank saves them."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from stage3.cogvideox.pipeline_cogvideox import SwinDPMPipeline
from tests.test_acceleration import TEST_BACKEND
from tests.test_stage3_stream import stream
from thematrix.acceleration import compile_blocks
from thematrix.parallel import enable_context_parallel

FRAMES, CHANNELS, HEIGHT, WIDTH = 5, 4, 6, 8  # latents of the tiny model: 12 tokens per frame
TIMESTEPS = [[0, 100, 100, 600, 600]]  # a Swin-DPM window's per-frame timesteps
CONTROLS = [[0, 1, 0, 1, 1]]


def forward(pipeline: SwinDPMPipeline) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, FRAMES, CHANNELS, HEIGHT, WIDTH, generator=generator)
    config = pipeline.transformer.config
    text = torch.randn(1, config.max_text_seq_length, config.text_embed_dim, generator=generator)
    with torch.no_grad():
        return pipeline.transformer(latents, text, torch.tensor(TIMESTEPS), torch.tensor(CONTROLS)).sample


def outputs(pipeline: SwinDPMPipeline) -> dict[str, torch.Tensor]:
    chunks = list(stream(pipeline))
    return {
        "forward": forward(pipeline),
        "frames": torch.cat([chunk.frames for chunk in chunks]),
        "latents": torch.cat([chunk.latents for chunk in chunks]),
    }


def main(model_dir: str, output_prefix: str) -> None:
    dist.init_process_group("gloo")
    # diffusers gives rank r the accelerator r % device_count; the CPU has none, so it stands as the one.
    torch.accelerator.device_count = lambda: 1
    pipeline = SwinDPMPipeline.from_model_dir(model_dir, device=torch.device("cpu"), dtype=torch.float32)
    results = {"single": outputs(pipeline)}
    enable_context_parallel(pipeline.transformer, dist.get_world_size())
    results["parallel"] = outputs(pipeline)
    compile_blocks(pipeline.transformer, backend=TEST_BACKEND)
    results["compiled"] = {"forward": forward(pipeline)}
    torch.save(results, f"{output_prefix}{dist.get_rank()}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
