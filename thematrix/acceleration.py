"""Fast paths for streaming on a GPU, each a setting that is off by default.

- ``--compile`` (``compile_stream``): regional compilation, each transformer block and control block compiled on
  its own (diffusers' ``compile_repeated_blocks``), so the 30 identical blocks share one compiled graph and
  compiling takes seconds, not minutes; and the VAE decoder's and encoder's forwards compiled (their conv caches
  are inputs and outputs, so the streaming decoder keeps working; the encoder takes the initial clip, on the way
  to the first frame), with cuDNN's autotuner choosing the 3D convolutions' algorithms and the VAE's convolution
  weights in channels-last layout, cuDNN's own, so it does not transpose each convolution's input and output. The
  compiled graphs are saved for the next launch (thematrix/precompile.py), where torch can save them.
- ``--overlap_decode`` (a ``stream`` option, see stage 3's pipeline): each group decoded on a second CUDA stream
  while the next group's forwards run.
- ``--decode_device cuda:1`` (``SwinDPMPipeline.place_decoder``): the VAE on a second GPU, each group decoded there
  while the first GPU runs the next group's forwards; checked here (``check_device``) before any weight loads.
- ``--fp8`` (``quantize_fp8``): the attention and feed-forward linear layers of the transformer's and control
  blocks run as FP8 matmuls (torchao: FP8 weights, activations scaled per row as they come), on GPUs with FP8
  tensor cores; checked (``check_fp8``) before any weight loads; compiled, those blocks' kernels are tuned at their
  first run. It changes values, not only their order: ``bench/bench_stream.py`` states the error.

Training has four such settings: ``args.compile_blocks`` (``compile_blocks``); ``args.checkpoint_keeps_attention``
(``enable_checkpointing``): gradient checkpointing that keeps each block's attention outputs from the forward
instead of recomputing them in the backward (selective activation checkpointing), the same operations otherwise;
``args.offload_checkpoints`` (``CheckpointOffload``): the block inputs checkpointing keeps wait for the backward in
the host's memory; and ``args.fp8_training`` (``convert_fp8_training``): the same linear layers as ``--fp8``
trained through FP8 matmuls (torchao's float8 training), checked like ``--fp8`` before any weight loads.

Compilation only reorders floating-point work: ``bench/bench_stream.py`` measures the error of the latents and the
frames against the eager path on the GPU, and ``tests/test_acceleration.py`` checks the compiled graphs on the tiny
model. The other CPU tests run the eager path.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import sys
import weakref

import torch
from diffusers.models.attention import Attention, FeedForward
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
    noop_context_fn,
)

from thematrix.config import ConfigError
from thematrix.parallel import splits_unevenly
from thematrix.precompile import PrecompiledForward, precompiled_dir

# torch.compile's default code generator; tests use "aot_eager" to check the graphs without a C++ toolchain.
DEFAULT_COMPILE_BACKEND = "inductor"
# The blocks that repeat in every transformer of the project: CogVideoX's (the stock class declares none to
# diffusers' regional compilation in 0.42) and the Interactive Module's.
REPEATED_BLOCKS = ("CogVideoXBlock", "ControlBlock")
# FP8 tensor cores: Ada and Hopper GPUs (compute capability 8.9) and later.
FP8_MIN_CAPABILITY = (8, 9)
# FP8 matmuls take matrices whose inner and output sizes are multiples of 16.
FP8_SIZE_MULTIPLE = 16
# The layout the compiled VAE computes in (``to_channels_last``), and gives its video inputs before choosing a graph.
VAE_MEMORY_FORMAT = torch.channels_last_3d
# The span of the frames a stream hands out ([-1, 1]): the peak of their PSNR.
PIXEL_RANGE = 2.0
# torchao's recommended inductor settings for its quantized layers, each Triton kernel's launch configuration tuned
# at its first run, given to the FP8 blocks' compile alone: torchao's own quantize_ sets them for the whole process,
# where the VAE's many kernels then took over 5 minutes to compile on an H200.
FP8_BLOCK_COMPILE_OPTIONS = {"coordinate_descent_tuning": True, "coordinate_descent_check_all_directions": True}


def compile_blocks(transformer, backend: str | None = None) -> None:
    """Compile each of ``transformer``'s repeated blocks in place (diffusers' ``compile_repeated_blocks``): for the
    stream (``--compile``) and for training (``args.compile_blocks``). Blocks with FP8 weights (``quantize_fp8``)
    compile with their kernels tuned (``FP8_BLOCK_COMPILE_OPTIONS``); calling it again after the quantization
    recompiles them so."""
    transformer._repeated_blocks = list(REPEATED_BLOCKS)
    backend = backend or DEFAULT_COMPILE_BACKEND
    # fullgraph: a graph break inside a block would silently fall back to eager; fail loudly instead. The one
    # break allowed is the uneven context-parallel attention's (thematrix/parallel.py: attention_outside_graphs).
    settings = dict(fullgraph=not splits_unevenly(transformer._parallel_config), backend=backend)
    if backend == "inductor" and has_fp8_weights(transformer):
        settings["options"] = FP8_BLOCK_COMPILE_OPTIONS
    transformer.compile_repeated_blocks(**settings)


def has_fp8_weights(module: torch.nn.Module) -> bool:
    """Whether ``quantize_fp8`` converted some of ``module``'s layers (torchao's quantization is then imported)."""
    quantization = sys.modules.get("torchao.quantization")
    return quantization is not None and any(
        isinstance(parameter, quantization.Float8Tensor) for parameter in module.parameters()
    )


# The attention operators of each backend torch's scaled_dot_product_attention dispatches to (those this torch has).
ATTENTION_OPERATORS = tuple(
    getattr(torch.ops.aten, name).default
    for name in (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    )
    if hasattr(torch.ops.aten, name)
)


def keep_attention(context, operator, *args, **kwargs) -> CheckpointPolicy:
    """Selective checkpointing's policy: an attention operator's outputs are kept, everything else recomputed."""
    return CheckpointPolicy.MUST_SAVE if operator in ATTENTION_OPERATORS else CheckpointPolicy.PREFER_RECOMPUTE


# Checkpointed inputs at least this large wait for the backward in host memory (``args.offload_checkpoints``): a
# block's hidden states (85 MiB at 2B and 480x720), not the rotary tables and embeddings every block shares (6 MiB).
OFFLOAD_MIN_BYTES = 16 * 2**20


class OffloadedTensor:
    """A saved tensor's copy in host memory, and its copy back on the device while the backward needs it."""

    def __init__(self, host: torch.Tensor, device: torch.device):
        self.host, self.device = host, device
        self.on_device: torch.Tensor | None = None
        self.ready: torch.cuda.Event | None = None  # the copy back has landed (CUDA)


class CheckpointOffload:
    """Saved-tensor hooks around each checkpointed block (``args.offload_checkpoints``). Gradient checkpointing keeps
    each block's inputs on the GPU until the backward recomputes the block: at 2B and 480x720, 30 hidden states of
    85 MiB. Here they go to pinned host memory during the forward, on a side stream, and come back one block ahead of
    the backward's recompute (``unpack`` fetches the next one), so both copies overlap the blocks' work. The same
    values come back; on the CPU the copies are plain ones, for the tests."""

    def __init__(self, min_bytes: int | None = None):
        self.min_bytes = OFFLOAD_MIN_BYTES if min_bytes is None else min_bytes
        self.streams: dict[torch.device, torch.cuda.Stream] = {}
        self.waiting: list[weakref.ref] = []  # offloaded, in forward order: the backward asks for the last first

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    def copy_stream(self, device: torch.device) -> torch.cuda.Stream:
        if device not in self.streams:
            self.streams[device] = torch.cuda.Stream(device)
        return self.streams[device]

    def pack(self, tensor: torch.Tensor):
        if tensor.numel() * tensor.element_size() < self.min_bytes:
            return tensor
        if tensor.device.type == "cuda":
            stream = self.copy_stream(tensor.device)
            stream.wait_stream(torch.cuda.current_stream(tensor.device))
            host = torch.empty_like(tensor, device="cpu", pin_memory=True)
            with torch.cuda.stream(stream):
                host.copy_(tensor, non_blocking=True)
            tensor.record_stream(stream)  # its memory is not reused before the copy has read it
        else:
            host = tensor.detach().clone()
        entry = OffloadedTensor(host, tensor.device)
        self.waiting.append(weakref.ref(entry))
        return entry

    def fetch(self, entry: OffloadedTensor) -> None:
        """Start ``entry``'s copy back to its device, if not under way."""
        if entry.on_device is not None:
            return
        if entry.device.type != "cuda":
            entry.on_device = entry.host.clone()
            return
        stream = self.copy_stream(entry.device)
        with torch.cuda.stream(stream):
            entry.on_device = entry.host.to(entry.device, non_blocking=True)
            entry.ready = stream.record_event()

    def unpack(self, entry):
        if not isinstance(entry, OffloadedTensor):
            return entry
        self.fetch(entry)
        # Forget what the backward has asked for (or dropped), then fetch the block it reaches next.
        self.waiting = [ref for ref in self.waiting if ref() not in (None, entry)]
        if self.waiting:
            self.fetch(self.waiting[-1]())
        tensor, entry.on_device = entry.on_device, None
        if entry.ready is not None:
            current = torch.cuda.current_stream(entry.device)
            current.wait_event(entry.ready)
            tensor.record_stream(current)  # allocated on the copy stream, used and freed on this one
        return tensor


def checkpoint_function(keep_attention_outputs: bool, offload: CheckpointOffload | None):
    """The function diffusers checkpoints each block with: ``torch.utils.checkpoint`` of ``module(*args)``, its
    attention kept (``keep_attention``) or not, its inputs saved through ``offload``'s hooks or kept on the GPU."""
    context = noop_context_fn
    if keep_attention_outputs:
        context = functools.partial(create_selective_checkpoint_contexts, keep_attention)

    def run(module, *args):
        with offload.hooks() if offload is not None else contextlib.nullcontext():
            return checkpoint(module.__call__, *args, use_reentrant=False, context_fn=context)

    return run


def enable_checkpointing(transformer, keep_attention_outputs: bool, offload: CheckpointOffload | None = None) -> None:
    """Gradient checkpointing of every block (``args.gradient_checkpointing``): the forward keeps only each block's
    inputs, the backward recomputes the rest; with ``keep_attention_outputs`` (``args.checkpoint_keeps_attention``)
    the attention outputs are kept too, so the backward recomputes the linear layers and the elementwise work but
    not the attention, the largest share of a long window's FLOPs, for one activation of a block's size a block;
    with ``offload`` (``args.offload_checkpoints``) the inputs wait in host memory. With neither it
    makes diffusers' default call (non-reentrant ``torch.utils.checkpoint``)."""
    transformer.enable_gradient_checkpointing(checkpoint_function(keep_attention_outputs, offload))


class ChannelsLastGroupNorm(torch.nn.GroupNorm):
    """``torch.nn.GroupNorm`` for channels-last tensors, the same function: each channel's mean and mean square over
    the frames and pixels first, then the groups' from them. Compiled, the per-channel sums read a channels-last
    tensor along its rows, where the stock norm's per-group reduction reads a few channels a pixel and transposes
    (inductor fuses a copy to the default layout into each norm; on an H200, 0.32 s more of a stream's kernels than
    the norms took in that layout). The variance as mean square less squared mean, in float32."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        batch, channels = input.shape[:2]
        frames_and_pixels = tuple(range(2, input.dim()))
        broadcast = (slice(None), slice(None)) + (None,) * len(frames_and_pixels)
        values = input.float()
        channel_mean = values.mean(frames_and_pixels).view(batch, self.num_groups, -1)
        channel_square_mean = values.square().mean(frames_and_pixels).view(batch, self.num_groups, -1)
        group_mean = channel_mean.mean(-1, keepdim=True)
        group_variance = (channel_square_mean.mean(-1, keepdim=True) - group_mean.square()).clamp_min(0)
        scale = torch.rsqrt(group_variance + self.eps).expand_as(channel_mean).reshape(batch, channels)
        shift = group_mean.expand_as(channel_mean).reshape(batch, channels)
        output = (values - shift[broadcast]) * scale[broadcast]
        if self.affine:
            output = output * self.weight[broadcast[1:]] + self.bias[broadcast[1:]]
        return output.to(input.dtype)


def to_channels_last(module: torch.nn.Module) -> None:
    """``module``'s 2D and 3D convolution weights in channels-last layout, in place, its group norms computed for it
    (``ChannelsLastGroupNorm``). cuDNN's fast convolution kernels take channels-last tensors: given the default
    layout, each call transposes its input and output (on an H200, 0.45 s of a compiled stream's 6.1 s of kernels;
    bench/RESULTS.md). A convolution's output takes its weight's layout, so activations follow from the first
    convolution on."""
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Conv3d)):
            layout = torch.channels_last if isinstance(layer, torch.nn.Conv2d) else VAE_MEMORY_FORMAT
            layer.weight.data = layer.weight.data.contiguous(memory_format=layout)
        elif type(layer) is torch.nn.GroupNorm:
            layer.__class__ = ChannelsLastGroupNorm  # the same module and parameters, its forward per channel first


def compile_stream(pipeline, backend: str | None = None) -> None:
    """Compile ``pipeline``'s transformer blocks (``compile_stream_blocks``) and VAE decoder and encoder in place
    (``--compile``), the VAE's convolutions in channels-last layout; the first stream pays the compilation, whose
    graphs are kept on disk for the next launch (thematrix/precompile.py)."""
    backend = backend or DEFAULT_COMPILE_BACKEND
    compile_stream_blocks(pipeline.transformer, backend)
    to_channels_last(pipeline.vae)
    if pipeline.vae.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # The forward, not the module: the streaming decoder's hooks (which swap the conv caches) stay eager.
    # dynamic=False: a stream decodes a few fixed shapes (the priming batch, then groups), one graph each; the
    # initial clip is encoded in two (its first frame batch, without a conv cache, then the others, with one).
    folder = precompiled_dir()
    for coder in (pipeline.vae.decoder, pipeline.vae.encoder):
        if folder is None:
            coder.forward = torch.compile(coder.forward, dynamic=False, backend=backend)
        else:
            forward = PrecompiledForward(type(coder).forward, folder, backend, video_memory_format=VAE_MEMORY_FORMAT)
            forward.install(coder)


def compile_stream_blocks(transformer, backend: str | None = None) -> None:
    """The stream's transformer and control blocks compiled in place: each block class's forward compiled whole,
    its graphs kept on disk for the next launch (``PrecompiledForward``), where this torch can save them and the
    blocks run on one GPU; regional compilation (``compile_blocks``) otherwise. Blocks of one class share a graph
    either way. Calling it again after ``quantize_fp8`` compiles the FP8 blocks with their kernels tuned."""
    backend = backend or DEFAULT_COMPILE_BACKEND
    folder = precompiled_dir()
    if folder is None or not isinstance(backend, str) or transformer._parallel_config is not None:
        compile_blocks(transformer, backend)
        return
    options = FP8_BLOCK_COMPILE_OPTIONS if backend == "inductor" and has_fp8_weights(transformer) else None
    forwards: dict[type, PrecompiledForward] = {}
    for block in transformer.modules():
        if type(block).__name__ in REPEATED_BLOCKS:
            if type(block) not in forwards:
                forwards[type(block)] = PrecompiledForward(type(block).forward, folder, backend, options)
            forwards[type(block)].install(block)


def apply_stream_fast_paths(pipeline, fp8: bool, compiled: bool) -> None:
    """``--fp8`` (``quantize_fp8``), then ``--compile`` (``compile_stream``), on ``pipeline`` in place: in that
    order, so that the blocks compile with their FP8 weights (and ``FP8_BLOCK_COMPILE_OPTIONS``)."""
    if fp8:
        quantize_fp8(pipeline.transformer)
    if compiled:
        compile_stream(pipeline)


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


def check_fp8(setting: str, device: torch.device) -> None:
    """A ConfigError unless ``device`` has FP8 tensor cores and torchao is installed, for ``setting`` (e.g. --fp8)."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < FP8_MIN_CAPABILITY:
        found = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"
        raise ConfigError(
            f"{setting} needs a GPU with FP8 tensor cores (compute capability 8.9 or later: L40S, RTX 4090, H100, "
            f"H200), and this run would be on {found}; leave {setting} off"
        )
    check_installed("torchao", "fp8", setting, "runs its matmuls")


def check_installed(package: str, extra: str, setting: str, work: str) -> None:
    """A ConfigError unless ``package`` (in the project's ``extra``) is installed, for ``setting``, which does
    ``work`` through it."""
    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"{setting} {work} through {package}, which is not installed: pip install {package} (or pip install -e "
            f"'.[{extra}]'), or leave {setting} off"
        )


def fp8_linear_names(transformer: torch.nn.Module) -> set[str]:
    """The linear layers ``quantize_fp8`` converts: those of the blocks' attention and feed-forward modules (diffusers'
    ``Attention`` and ``FeedForward``: nearly all of a forward's matmul work), at sizes FP8 matmuls take. Not the
    adaLN modulations, whose input is the timestep embedding (a few rows: no time to save), nor the embeddings and
    the output projection, small and closest to the pixels."""
    owners = tuple(
        f"{name}." for name, module in transformer.named_modules() if isinstance(module, (Attention, FeedForward))
    )
    return {
        name
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.startswith(owners)
        and module.in_features % FP8_SIZE_MULTIPLE == 0
        and module.out_features % FP8_SIZE_MULTIPLE == 0
    }


@functools.cache
def row_padded_float8_linear() -> type:
    """torchao's ``Float8Linear`` (imported here: torchao is optional) with its input rows padded to a multiple of
    FP8_SIZE_MULTIPLE: the weight gradient's matmul runs over the rows (the tokens: 23,176 in a 65-frame 480x720
    window), which FP8 matmuls take in multiples of 16. The padding rows are zeros, which change neither a
    tensor-wise scale nor a sum, and their outputs are cut off."""
    from torchao.float8.float8_linear import Float8Linear

    class RowPaddedFloat8Linear(Float8Linear):
        def forward(self, input: torch.Tensor) -> torch.Tensor:
            rows = input.shape[:-1].numel()
            missing = -rows % FP8_SIZE_MULTIPLE
            if not missing:
                return super().forward(input)
            padded = torch.nn.functional.pad(input.reshape(rows, input.shape[-1]), (0, 0, 0, missing))
            return super().forward(padded)[:rows].reshape(*input.shape[:-1], self.out_features)

    return RowPaddedFloat8Linear


def convert_fp8_training(transformer: torch.nn.Module, emulate: bool = False) -> list[str]:
    """Train ``transformer``'s block linear layers (``fp8_linear_names``, LoRA adapters left out) through FP8
    matmuls, in place (``args.fp8_training``): torchao's float8 training, tensor-wise scales computed each step,
    the weights kept in their precision (their names and state unchanged, so checkpoints and saved models are
    those of an unconverted run). ``emulate`` computes the FP8 casts in higher precision: the CPU tests. Returns the
    converted layers' names."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    names = {name for name in fp8_linear_names(transformer) if ".lora_" not in name}
    convert_to_float8_training(
        transformer, config=Float8LinearConfig(emulate=emulate), module_filter_fn=lambda _module, name: name in names
    )
    padded = row_padded_float8_linear()
    for name, module in transformer.named_modules():
        if name in names:
            module.__class__ = padded  # the same module and parameters, its forward padding the rows
    return sorted(names)


def quantize_fp8(transformer: torch.nn.Module) -> None:
    """``transformer``'s block linear layers (``fp8_linear_names``) to FP8 weights with per-row scales, their inputs
    quantised per row at run time (torchao's dynamic FP8), in place; before ``compile_stream``, which fuses the
    scaling into the graphs."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    names = fp8_linear_names(transformer)
    # set_inductor_config=False: torchao's default would tune every later compile's kernels, the VAE's too;
    # compile_blocks tunes the FP8 blocks' alone (FP8_BLOCK_COMPILE_OPTIONS).
    quantize_(
        transformer,
        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False),
        filter_fn=lambda _module, name: name in names,
    )
    # torchao gives each quantised layer an ``extra_repr`` of its own, a method around a ``functools.partial``,
    # which a saved graph's guards cannot pickle (PrecompiledForward): the class's own repr serves instead.
    for name, module in transformer.named_modules():
        if name in names:
            vars(module).pop("extra_repr", None)


def error_against(frames: torch.Tensor, latents: torch.Tensor, reference: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """A fast path's error against the eager stream's ``reference`` (frames, latents): the latents' largest and
    relative RMS error, the frames' PSNR (dB)."""
    reference_frames, reference_latents = reference
    frames, latents = frames.float(), latents.float()
    reference_frames, reference_latents = reference_frames.float(), reference_latents.float()
    mse = torch.mean((frames - reference_frames) ** 2).item()
    return {
        "latent_max_abs_error": (latents - reference_latents).abs().max().item(),
        "latent_relative_rms_error": ((latents - reference_latents).norm() / reference_latents.norm()).item(),
        "frames_psnr_db": math.inf if mse == 0 else 10 * math.log10(PIXEL_RANGE**2 / mse),
    }
