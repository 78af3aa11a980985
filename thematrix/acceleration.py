"""Fast paths for streaming on a GPU, each a setting that is off by default.

- ``--compile`` (``compile_stream``): regional compilation, each transformer block and control block compiled on
  its own (diffusers' ``compile_repeated_blocks``), so the 30 identical blocks share one compiled graph and
  compiling takes seconds, not minutes; and the VAE decoder's forward compiled (its conv caches are inputs and
  outputs, so the streaming decoder keeps working), with cuDNN's autotuner choosing the 3D convolutions'
  algorithms.
- ``--overlap_decode`` (a ``stream`` option, see stage 3's pipeline): each group decoded on a second CUDA stream
  while the next group's forwards run.
- ``--decode_device cuda:1`` (``SwinDPMPipeline.place_decoder``): the VAE on a second GPU, each group decoded there
  while the first GPU runs the next group's forwards; checked here (``check_device``) before any weight loads.

Compilation only reorders floating-point work: ``bench/bench_stream.py`` measures the error of the latents and the
frames against the eager path on the GPU, and ``tests/test_acceleration.py`` checks the compiled graphs on the tiny
model. The other CPU tests run the eager path.
"""

from __future__ import annotations

import torch

from thematrix.config import ConfigError

# torch.compile's default code generator; tests use "aot_eager" to check the graphs without a C++ toolchain.
DEFAULT_COMPILE_BACKEND = "inductor"
# The blocks that repeat in every transformer of the project: CogVideoX's (the stock class declares none to
# diffusers' regional compilation in 0.42) and the Interactive Module's.
REPEATED_BLOCKS = ("CogVideoXBlock", "ControlBlock")


def compile_blocks(transformer, backend: str | None = None) -> None:
    """Compile each of ``transformer``'s repeated blocks in place (diffusers' ``compile_repeated_blocks``): for the
    stream (``--compile``) and for training (``args.compile_blocks``)."""
    transformer._repeated_blocks = list(REPEATED_BLOCKS)
    # fullgraph: a graph break inside a block would silently fall back to eager; fail loudly instead.
    transformer.compile_repeated_blocks(fullgraph=True, backend=backend or DEFAULT_COMPILE_BACKEND)


def compile_stream(pipeline, backend: str | None = None) -> None:
    """Compile ``pipeline``'s transformer blocks and VAE decoder in place (``--compile``); the first stream pays the
    compilation (inductor caches it on disk, so a second launch reuses it)."""
    compile_blocks(pipeline.transformer, backend)
    if pipeline.vae.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    decoder = pipeline.vae.decoder
    # The forward, not the module: the streaming decoder's hooks (which swap the conv caches) stay eager.
    # dynamic=False: a stream decodes a few fixed shapes (the priming batch, then groups), one graph each.
    decoder.forward = torch.compile(decoder.forward, dynamic=False, backend=backend or DEFAULT_COMPILE_BACKEND)


def check_device(setting: str, name: str) -> torch.device:
    """``name`` as a device this machine has (``setting`` is the flag that gave it), or a ConfigError that says
    which devices there are."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"{setting} {name!r} is not a device name ({error}); pass e.g. cuda:1 or cpu") from None
    if device.type == "cuda":
        available = torch.cuda.device_count()
        if device.index is None or device.index >= available:
            there = f"cuda:0 to cuda:{available - 1}" if available else "no CUDA device"
            raise ConfigError(
                f"{setting} {name}: this machine has {there}; pass a GPU index it has (e.g. cuda:1 on a 2-GPU machine)"
            )
    elif device.type != "cpu":
        raise ConfigError(f"{setting} {name}: the stream decodes on a CUDA GPU (cuda:N) or on the cpu")
    return device
