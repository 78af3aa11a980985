"""Compiled graphs kept between launches (thematrix/precompile.py): a second launch loads every graph the first
compiled and streams the same frames; a graph whose traced code changed since is compiled again."""

from __future__ import annotations

import copy
import importlib
import sys
import textwrap

import torch

from tests.test_stage3_stream import frames_of, stream
from thematrix import acceleration
from thematrix.acceleration import VAE_MEMORY_FORMAT, compile_stream, compile_stream_blocks
from thematrix.precompile import PrecompiledForward

TEST_BACKEND = "aot_eager"  # no C++ toolchain needed; the saving and loading are the same
# The benchmark's window (4 groups of 4 latent frames): each group's latents reach the decoder in two batches and the
# initial clip the encoder in several, so their inputs come in every layout the stream makes.
BENCH_WINDOW = dict(num_groups=4, group_size=4, max_groups=2)
# A layer whose source the tests rewrite between launches
SCALED_LAYER_CODE = """
    import torch

    class ScaledLayer(torch.nn.Linear):
        def forward(self, input):
            return super().forward(input) * {scale}
"""


def precompiled_forwards(pipeline) -> set[PrecompiledForward]:
    modules = (*pipeline.transformer.modules(), *pipeline.vae.modules())
    return {vars(module)["forward"].__func__ for module in modules if "forward" in vars(module)}


def test_a_second_launch_loads_every_graph_and_streams_the_same(pipeline, precompiled_folder):
    eager = frames_of(list(stream(pipeline, **BENCH_WINDOW)))
    first, second = copy.deepcopy(pipeline), copy.deepcopy(pipeline)
    compile_stream(first, backend=TEST_BACKEND)
    first_frames = frames_of(list(stream(first, **BENCH_WINDOW)))
    torch._dynamo.reset()  # the second launch: nothing in memory but the files
    compile_stream(second, backend=TEST_BACKEND)
    second_frames = frames_of(list(stream(second, **BENCH_WINDOW)))

    first_forwards, second_forwards = precompiled_forwards(first), precompiled_forwards(second)
    saved = sorted(path.name.split("-")[0] for path in precompiled_folder.iterdir())
    assert all(path.suffix == ".bin" for path in precompiled_folder.iterdir())  # no partial file left behind
    assert set(saved) == {
        "CogVideoXBlock.forward",
        "ControlBlock.forward",
        "CogVideoXDecoder3D.forward",
        "CogVideoXEncoder3D.forward",
    }
    # One graph per signature, whatever the inputs' layout (canonical_layout): the decoder's first batch, its
    # second (with the first batch's caches) and every later one; the encoder's first batch and every later one.
    assert saved.count("CogVideoXDecoder3D.forward") == 3
    assert saved.count("CogVideoXEncoder3D.forward") == 2
    assert sum(forward.compiled for forward in first_forwards) == len(saved)
    assert sum(forward.compiled for forward in second_forwards) == 0
    assert sum(forward.loaded for forward in second_forwards) == len(saved)
    torch.testing.assert_close(second_frames, first_frames, atol=0, rtol=0)
    torch.testing.assert_close(second_frames, eager, atol=1e-5, rtol=1e-5)


def test_fp8_blocks_graphs_are_saved_and_loaded(pipeline, precompiled_folder, monkeypatch):
    """torchao's FP8 weights (tensor subclasses) go into saved graphs too: a second launch loads both block classes'
    graphs and streams the same frames."""
    from torchao.quantization import quant_api

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    fp8 = copy.deepcopy(pipeline).to(dtype=torch.bfloat16)
    acceleration.quantize_fp8(fp8.transformer)
    first, second = copy.deepcopy(fp8), copy.deepcopy(fp8)
    compile_stream_blocks(first.transformer, backend=TEST_BACKEND)
    first_frames = frames_of(list(stream(first)))
    torch._dynamo.reset()
    compile_stream_blocks(second.transformer, backend=TEST_BACKEND)
    second_frames = frames_of(list(stream(second)))

    saved = sorted(path.name.split("-")[0] for path in precompiled_folder.iterdir())
    assert saved == ["CogVideoXBlock.forward", "ControlBlock.forward"]
    assert sum(forward.loaded for forward in precompiled_forwards(second)) == len(saved)
    assert sum(forward.compiled for forward in precompiled_forwards(second)) == 0
    torch.testing.assert_close(second_frames, first_frames, atol=0, rtol=0)


def scaled_layer_launch(
    source, folder, scale: float, seed: int = 0
) -> tuple[PrecompiledForward, torch.Tensor, torch.Tensor]:
    """One launch of a layer defined in ``source`` (its forward scaling a linear layer's by ``scale``, its weights
    drawn from ``seed``): its precompiled forward, its output and its eager output."""
    source.write_text(textwrap.dedent(SCALED_LAYER_CODE.format(scale=scale)))
    sys.modules.pop("scaled_layer", None)
    module_class = importlib.import_module("scaled_layer").ScaledLayer
    torch.manual_seed(seed)
    layer = module_class(4, 2)
    forward = PrecompiledForward(module_class.forward, folder, TEST_BACKEND)
    forward.install(layer)
    torch._dynamo.reset()
    input = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    return forward, layer(input), module_class.forward(layer, input)


def test_a_loaded_graph_computes_with_the_modules_own_weights(tmp_path, precompiled_folder, monkeypatch):
    """The weights are the graph's inputs, not constants baked into it: a layer with other weights (same shapes)
    loads the graph and gets its own output."""
    monkeypatch.syspath_prepend(str(tmp_path))
    first, output, _ = scaled_layer_launch(tmp_path / "scaled_layer.py", precompiled_folder, 2.0, seed=0)
    other, other_output, other_eager = scaled_layer_launch(
        tmp_path / "scaled_layer.py", precompiled_folder, 2.0, seed=1
    )
    assert (first.compiled, other.compiled, other.loaded) == (1, 0, 1)
    assert not torch.allclose(other_output, output)
    torch.testing.assert_close(other_output, other_eager)


def test_a_graph_whose_code_changed_is_compiled_again(tmp_path, precompiled_folder, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))

    def launch(scale: float) -> tuple[PrecompiledForward, torch.Tensor]:
        forward, output, _ = scaled_layer_launch(tmp_path / "scaled_layer.py", precompiled_folder, scale)
        return forward, output

    first, doubled = launch(2.0)
    unchanged, doubled_again = launch(2.0)
    changed, tripled = launch(3.0)
    assert (first.compiled, unchanged.compiled, unchanged.loaded, changed.compiled) == (1, 0, 1, 1)
    torch.testing.assert_close(doubled_again, doubled)
    torch.testing.assert_close(tripled, doubled * 1.5)


def test_video_inputs_in_either_layout_share_one_graph(precompiled_folder):
    """The VAE computes channels-last (``to_channels_last``), and the stream hands it latents and caches in both
    layouts (on the 2B model and in the benchmark's stream: five decoder graphs where three signatures exist):
    given its layout first, a contiguous input, a channels-last one and a permuted view compile one graph."""
    torch.manual_seed(0)
    convolution = torch.nn.Conv3d(4, 2, 3, padding=1)
    convolution.weight.data = convolution.weight.data.contiguous(memory_format=VAE_MEMORY_FORMAT)
    forward = PrecompiledForward(
        torch.nn.Conv3d.forward, precompiled_folder, TEST_BACKEND, video_memory_format=VAE_MEMORY_FORMAT
    )
    forward.install(convolution)
    video = torch.randn(1, 4, 3, 6, 8, generator=torch.Generator().manual_seed(0))
    layouts = (video, video.contiguous(memory_format=VAE_MEMORY_FORMAT), video.permute(0, 2, 1, 3, 4).transpose(1, 2))
    for input in layouts:
        torch.testing.assert_close(convolution(input), torch.nn.Conv3d.forward(convolution, video))
    assert forward.compiled == 1
