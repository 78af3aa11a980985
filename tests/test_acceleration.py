"""The fast paths on the tiny model: the compiled transformer blocks and decoder give the eager stream, the
overlapped decode gives the same stream with its controls asked one group earlier (and so does a decoder on its own
device), and training with compiled
blocks (a LoRA run and a full fine-tuning with control blocks) gives the eager run's weights."""

from __future__ import annotations

import copy

import pytest
import torch

from stage1.train_text_to_video_lora import LoraTrainer
from stage3 import inference
from stage3.cogvideox.pipeline_cogvideox import SwinDPMPipeline
from stage3.train_text_to_video_sft import SwinTrainer
from tests.test_stage3_stream import frames_of, stream
from tests.test_stage3_train import stage3_args
from thematrix import acceleration
from thematrix.acceleration import compile_stream
from thematrix.config import ConfigError

# No C++ toolchain is needed to capture the graphs and run them; inductor's code generation is the GPU's part
# (bench/bench_stream.py measures its error there).
TEST_BACKEND = "aot_eager"
# Compiled graphs round differently from eager ops, and AdamW's m / sqrt(v) turns rounding on an element whose
# gradients nearly cancel into steps of up to the learning rate: a tenth of one step bounds what 4 steps showed
# (3% of a step at most), while a wrong gradient moves weights by whole steps.
COMPILE_ROUNDING_STEPS = 0.1


def test_compiled_stream_equals_eager(pipeline):
    compiled = copy.deepcopy(pipeline)
    compile_stream(compiled, backend=TEST_BACKEND)
    eager_chunks, compiled_chunks = list(stream(pipeline)), list(stream(compiled))

    # Every repeated block and the decoder run compiled (fullgraph: a graph break would have raised).
    blocks = [*compiled.transformer.transformer_blocks, *compiled.transformer.control_blocks]
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert compiled.vae.decoder.forward is not pipeline.vae.decoder.forward
    assert "forward" in vars(compiled.vae.decoder) and "forward" not in vars(pipeline.vae.decoder)
    torch.testing.assert_close(frames_of(compiled_chunks), frames_of(eager_chunks), atol=1e-5, rtol=1e-5)
    for eager, fast in zip(eager_chunks, compiled_chunks, strict=True):
        torch.testing.assert_close(fast.latents, eager.latents, atol=1e-5, rtol=1e-5)


def test_overlapped_decode_same_stream_controls_asked_one_group_earlier(pipeline):
    events = []

    def controls(group: int) -> list[str]:
        events.append(("ask", group))
        return ["RIGHT", "LEFT"] if group % 2 else ["LEFT", "LEFT"]

    def run(overlap_decode: bool):
        events.clear()
        chunks = []
        for chunk in stream(pipeline, controls=controls, max_groups=3, overlap_decode=overlap_decode):
            events.append(("show", chunk.group_index))
            chunks.append(chunk)
        return chunks, list(events)

    plain, plain_events = run(False)
    overlapped, overlapped_events = run(True)

    assert torch.equal(frames_of(overlapped), frames_of(plain))
    assert [chunk.controls for chunk in overlapped] == [chunk.controls for chunk in plain]
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(overlapped, plain, strict=True))
    # The window holds 2 groups: groups 0 and 1 are asked for at the start, each later one when a group leaves.
    assert plain_events == [("ask", 0), ("ask", 1), ("show", 0), ("ask", 2), ("show", 1), ("ask", 3), ("show", 2)]
    # Overlapped, a group is shown after the next one's forwards: group 2's controls are chosen before group 0
    # is seen; the last group is shown without waiting for one more.
    assert overlapped_events == [
        ("ask", 0),
        ("ask", 1),
        ("ask", 2),
        ("show", 0),
        ("ask", 3),
        ("show", 1),
        ("show", 2),
    ]


def test_decoding_on_its_own_device_is_the_overlapped_stream(pipeline, monkeypatch):
    """The CPU has one device, so the test makes the stream take its path for a VAE on another device: it must keep
    the overlapped order and give the one-device stream's frames and latents exactly (the CUDA copies and stream
    waits of two GPUs are bench/bench_stream.py's decode_on_cuda_1 rows)."""
    events = []

    def controls(group: int) -> list[str]:
        events.append(("ask", group))
        return ["RIGHT", "LEFT"] if group % 2 else ["LEFT", "LEFT"]

    def run(**options):
        events.clear()
        chunks = []
        for chunk in stream(pipeline, controls=controls, max_groups=3, **options):
            events.append(("show", chunk.group_index))
            chunks.append(chunk)
        return chunks, list(events)

    one_device, _ = run()
    overlapped, overlapped_events = run(overlap_decode=True)
    monkeypatch.setattr(SwinDPMPipeline, "decodes_apart", True)
    apart, apart_events = run()

    assert apart_events == overlapped_events
    assert torch.equal(frames_of(apart), frames_of(one_device))
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(apart, one_device, strict=True))


def test_decode_device_flag_places_the_vae_and_refuses_a_missing_gpu(model_dir, tmp_path):
    arguments = ["--model_dir", str(model_dir), "--initial_video", str(tmp_path / "clip.mp4")]
    args = inference.parse_args([*arguments, "--decode_device", "cpu"])
    start = inference.check_stream_options(args)
    pipeline = inference.load_pipeline(args, start)
    assert pipeline.vae.device == torch.device("cpu") and pipeline.device == pipeline.transformer.device

    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ConfigError, match=f"--decode_device {missing}: this machine has"):
        inference.check_stream_options(inference.parse_args([*arguments, "--decode_device", missing]))


@pytest.mark.parametrize("stage", ["stage 1 LoRA", "stage 3 full"])
def test_training_with_compiled_blocks_gives_the_eager_weights(
    stage, lora_args, tiny_model_dir, tiny_dataset, tmp_path, monkeypatch
):
    monkeypatch.setattr(acceleration, "DEFAULT_COMPILE_BACKEND", TEST_BACKEND)
    weights, compiled_blocks = {}, []
    for compile_blocks in (False, True):
        output = f"compiled_{compile_blocks}"
        # Gradient checkpointing on: the compiled blocks run inside the checkpoint's recomputation too.
        settings = dict(compile_blocks=compile_blocks, gradient_checkpointing=True)
        if stage == "stage 1 LoRA":
            trainer = LoraTrainer(lora_args(output, **settings))
        else:
            trainer = SwinTrainer(stage3_args(tiny_model_dir, tiny_dataset, tmp_path / output, **settings))
        trainer.train()
        model = trainer.accelerator.unwrap_model(trainer.transformer)
        weights[compile_blocks] = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        compiled_blocks = [block._compiled_call_impl is not None for block in model.transformer_blocks]
        learning_rate = trainer.args.learning_rate
    assert all(compiled_blocks)
    eager, compiled = weights[False], weights[True]
    assert eager.keys() == compiled.keys()
    for name, value in compiled.items():
        torch.testing.assert_close(value, eager[name], atol=COMPILE_ROUNDING_STEPS * learning_rate, rtol=0)
