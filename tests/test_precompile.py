"""Compiled graphs kept between launches (thematrix/precompile.py): a second launch loads every graph the first
compiled and streams the same frames; a graph whose traced code changed since is compiled again."""

from __future__ import annotations

import copy
import importlib
import sys
import textwrap

import torch

from tests.test_stage3_stream import frames_of, stream
from thematrix.acceleration import compile_stream
from thematrix.precompile import PrecompiledForward

TEST_BACKEND = "aot_eager"  # no C++ toolchain needed; the saving and loading are the same


def precompiled_forwards(pipeline) -> set[PrecompiledForward]:
    modules = (*pipeline.transformer.modules(), *pipeline.vae.modules())
    return {vars(module)["forward"].__func__ for module in modules if "forward" in vars(module)}


def test_a_second_launch_loads_every_graph_and_streams_the_same(pipeline, precompiled_folder):
    eager = frames_of(list(stream(pipeline)))
    first, second = copy.deepcopy(pipeline), copy.deepcopy(pipeline)
    compile_stream(first, backend=TEST_BACKEND)
    first_frames = frames_of(list(stream(first)))
    torch._dynamo.reset()  # the second launch: nothing in memory but the files
    compile_stream(second, backend=TEST_BACKEND)
    second_frames = frames_of(list(stream(second)))

    first_forwards, second_forwards = precompiled_forwards(first), precompiled_forwards(second)
    saved = sorted(path.name.split("-")[0] for path in precompiled_folder.iterdir())
    assert set(saved) == {
        "CogVideoXBlock.forward",
        "ControlBlock.forward",
        "CogVideoXDecoder3D.forward",
        "CogVideoXEncoder3D.forward",
    }
    assert saved.count("CogVideoXDecoder3D.forward") >= 2  # the decoder's first batch, then groups
    assert sum(forward.compiled for forward in first_forwards) == len(saved)
    assert sum(forward.compiled for forward in second_forwards) == 0
    assert sum(forward.loaded for forward in second_forwards) == len(saved)
    torch.testing.assert_close(second_frames, first_frames, atol=0, rtol=0)
    torch.testing.assert_close(second_frames, eager, atol=1e-5, rtol=1e-5)


def test_a_graph_whose_code_changed_is_compiled_again(tmp_path, precompiled_folder, monkeypatch):
    source = tmp_path / "scaled_layer.py"
    layer_code = """
        import torch

        class ScaledLayer(torch.nn.Linear):
            def forward(self, input):
                return super().forward(input) * {scale}
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    input = torch.randn(3, 4)

    def launch(scale: float) -> tuple[PrecompiledForward, torch.Tensor]:
        source.write_text(textwrap.dedent(layer_code.format(scale=scale)))
        sys.modules.pop("scaled_layer", None)
        module_class = importlib.import_module("scaled_layer").ScaledLayer
        torch.manual_seed(0)
        layer = module_class(4, 2)
        forward = PrecompiledForward(module_class.forward, precompiled_folder, TEST_BACKEND)
        forward.install(layer)
        torch._dynamo.reset()
        return forward, layer(input)

    first, doubled = launch(2.0)
    unchanged, doubled_again = launch(2.0)
    changed, tripled = launch(3.0)
    assert (first.compiled, unchanged.compiled, unchanged.loaded, changed.compiled) == (1, 0, 1, 1)
    torch.testing.assert_close(doubled_again, doubled)
    torch.testing.assert_close(tripled, doubled * 1.5)
