"""The fast paths on the tiny model: the compiled transformer blocks and decoder give the eager stream, the
overlapped decode gives the same stream with its controls asked one group earlier (and so does a decoder on its own
device), and training with compiled
blocks (a LoRA run and a full fine-tuning with control blocks) gives the eager run's weights. FP8 needs a GPU: here,
which layers it takes at 2B, its refusals before a model loads, and that it leaves the compiler's settings alone."""

from __future__ import annotations

import copy
import importlib.util
import re

import pytest
import torch
import torch._dynamo.testing
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from stage1.train_text_to_video_lora import LoraTrainer
from stage2.train_text_to_video_sft import InteractiveTrainer
from stage2.training.arguments import SftArgs
from stage3 import inference
from stage3.cogvideox.pipeline_cogvideox import SwinDPMPipeline
from stage3.train_text_to_video_sft import SwinTrainer
from tests.test_stage2 import stage2_args
from tests.test_stage3_stream import frames_of, stream
from tests.test_stage3_train import stage3_args
from thematrix import acceleration
from thematrix.acceleration import ChannelsLastGroupNorm, check_fp8, compile_stream, fp8_linear_names
from thematrix.config import ConfigError
from thematrix.models import InteractiveCogVideoXTransformer3DModel
from thematrix.precompile import is_precompiled
from thematrix.presets import PRESETS
from thematrix.training import trainer as trainer_module

# No C++ toolchain is needed to capture the graphs and run them; inductor's code generation is the GPU's part
# (bench/bench_stream.py measures its error there).
TEST_BACKEND = "aot_eager"
# Compiled graphs round differently from eager ops, and AdamW's m / sqrt(v) turns rounding on an element whose
# gradients nearly cancel into steps of up to the learning rate: a tenth of one step bounds what 4 steps showed
# (3% of a step at most), while a wrong gradient moves weights by whole steps.
COMPILE_ROUNDING_STEPS = 0.1
# FP8 (e4m3, per-row scales) keeps about 2 significant digits a matmul: the tiny model's groups came out 2.7 to
# 3.0% off the bf16 stream's latents, their frames at 41 to 47 dB. Every linear layer quantized (the embeddings and
# the output projection too) gave 6.1 to 7.0%; an unquantized stream gives 0.
FP8_MIN_LATENT_ERROR, FP8_MAX_LATENT_ERROR, FP8_MIN_FRAMES_PSNR_DB = 0.001, 0.045, 35.0


def test_compiled_stream_equals_eager(pipeline):
    compiled = copy.deepcopy(pipeline)
    compile_stream(compiled, backend=TEST_BACKEND)
    eager_chunks, compiled_chunks = list(stream(pipeline)), list(stream(compiled))

    # Every repeated block, the decoder and the encoder run compiled (fullgraph: a graph break would have raised).
    blocks = [*compiled.transformer.transformer_blocks, *compiled.transformer.control_blocks]
    assert all(is_precompiled(module) for module in (*blocks, compiled.vae.decoder, compiled.vae.encoder))
    assert not any(is_precompiled(module) for module in (*pipeline.transformer.modules(), *pipeline.vae.modules()))
    convolutions = [layer for layer in compiled.vae.modules() if isinstance(layer, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert convolutions and all(
        layer.weight.is_contiguous(
            memory_format=torch.channels_last_3d if layer.weight.dim() == 5 else torch.channels_last
        )
        for layer in convolutions
    )
    norms = [layer for layer in compiled.vae.modules() if isinstance(layer, torch.nn.GroupNorm)]
    assert norms and all(type(layer) is ChannelsLastGroupNorm for layer in norms)
    torch.testing.assert_close(frames_of(compiled_chunks), frames_of(eager_chunks), atol=1e-5, rtol=1e-5)
    for eager, fast in zip(eager_chunks, compiled_chunks, strict=True):
        torch.testing.assert_close(fast.latents, eager.latents, atol=1e-5, rtol=1e-5)


def test_every_block_of_a_stream_runs_one_compiled_graph(pipeline, fresh_compiler):
    """One graph per repeated block class for a whole stream: a block that needs another (its inputs laid out
    otherwise) costs a compile more, cold and at each launch (at 2B about as long as the block's own)."""
    compiled = copy.deepcopy(pipeline)
    assert len(compiled.transformer.transformer_blocks) > 1 and len(compiled.transformer.control_blocks) > 0
    counter = torch._dynamo.testing.CompileCounter()
    acceleration.compile_blocks(compiled.transformer, backend=counter)
    list(stream(compiled))
    assert counter.frame_count == 2  # the transformer block's and the control block's


@pytest.mark.parametrize(
    ("shape", "layout", "affine"),
    [((2, 64, 3, 10, 12), torch.channels_last_3d, True), ((2, 48, 9, 7), torch.channels_last, False)],
)
def test_channels_last_group_norm_is_the_group_norm(shape, layout, affine):
    torch.manual_seed(0)
    stock = torch.nn.GroupNorm(16, shape[1], eps=1e-6, affine=affine)
    if affine:
        torch.nn.init.normal_(stock.weight)
        torch.nn.init.normal_(stock.bias)
    per_channel_first = ChannelsLastGroupNorm(16, shape[1], eps=1e-6, affine=affine)
    per_channel_first.load_state_dict(stock.state_dict())
    # An offset mean, as activations have: the variance from mean squares must not lose it.
    input = (torch.randn(shape) * 3 + 5).contiguous(memory_format=layout)
    torch.testing.assert_close(per_channel_first(input), stock(input), atol=2e-5, rtol=1e-5)


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


@pytest.mark.parametrize("stage", ["stage 1 LoRA", "stage 2 Interactive Module", "stage 3 full"])
def test_training_with_compiled_blocks_gives_the_eager_weights(
    stage, lora_args, tiny_model_dir, tiny_dataset, tmp_path, monkeypatch, fresh_compiler
):
    monkeypatch.setattr(acceleration, "DEFAULT_COMPILE_BACKEND", TEST_BACKEND)
    weights, compiled_blocks = {}, []
    for compile_blocks in (False, True):
        output = f"compiled_{compile_blocks}"
        # Gradient checkpointing on: the compiled blocks run inside the checkpoint's recomputation too.
        settings = dict(compile_blocks=compile_blocks, gradient_checkpointing=True)
        if stage == "stage 1 LoRA":
            trainer = LoraTrainer(lora_args(output, **settings))
        elif stage == "stage 2 Interactive Module":  # frozen compiled blocks, the control blocks beside them training
            trainer = InteractiveTrainer(
                stage2_args(tiny_model_dir, tiny_dataset, tmp_path / output, max_train_steps=4, **settings)
            )
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


# The linear layers of a block that carry its matmul work: attention projections and the feed-forward.
FP8_BLOCK_LAYERS = {
    "transformer_blocks": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2"),
    "control_blocks": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.0.proj", "ff.net.2"),
}


def test_fp8_takes_every_attention_and_feed_forward_layer_of_the_2b_blocks_and_nothing_else():
    config = PRESETS["cogvideox-2b"]["transformer"]
    with torch.device("meta"):
        model = InteractiveCogVideoXTransformer3DModel(
            **config,
            control_dim=config["text_embed_dim"],
            control_tokens=["GAS", "BRAKE"],
            control_phrases=["gas", "brake"],
            control_feed_forward_mult=SftArgs.control_feed_forward_mult,
        )
    expected = {
        f"{blocks}.{index}.{layer}"
        for blocks, layers in FP8_BLOCK_LAYERS.items()
        for index in range(len(getattr(model, blocks)))
        for layer in layers
    }
    assert len(model.control_blocks) == config["num_layers"] // 2
    assert fp8_linear_names(model) == expected


def test_fp8_is_refused_before_a_model_loads_without_fp8_tensor_cores_or_torchao(model_dir, tmp_path, monkeypatch):
    args = inference.parse_args(["--model_dir", str(model_dir), "--initial_video", str(tmp_path / "clip.mp4"), "--fp8"])
    monkeypatch.setattr(inference, "default_device_and_dtype", lambda: (torch.device("cpu"), torch.float32))
    with pytest.raises(ConfigError, match="--fp8 needs a GPU with FP8 tensor cores .* on the CPU; leave --fp8 off"):
        inference.check_stream_options(args)

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ConfigError, match="on NVIDIA A100-SXM4-80GB"):
        check_fp8("--fp8", torch.device("cuda"))

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "torchao" else find_spec(name))
    with pytest.raises(ConfigError, match="pip install torchao"):
        check_fp8("--fp8", torch.device("cuda"))


def test_fp8_quantizes_the_blocks_and_leaves_the_compilers_settings_alone(monkeypatch):
    """``quantize_fp8`` turns the block layers into FP8 tensors and leaves inductor's settings as they were: torchao's
    default would turn on exhaustive autotuning for every compile after it, the VAE's too (the CPU has no FP8 tensor
    cores, so torchao's hardware check is skipped: the weights' conversion is the same)."""
    from torchao.quantization import Float8Tensor, quant_api

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    config = dict(PRESETS["tiny"]["transformer"], num_layers=2)
    model = InteractiveCogVideoXTransformer3DModel(
        **config, control_dim=config["text_embed_dim"], control_tokens=["GAS"], control_phrases=["gas"]
    ).to(torch.bfloat16)
    settings = torch._inductor.config.get_config_copy()
    acceleration.quantize_fp8(model)
    after = torch._inductor.config.get_config_copy()
    torch._inductor.config.load_config(settings)  # the later tests compile with the settings they expect
    assert after == settings
    quantized = {name.removesuffix(".weight") for name, p in model.named_parameters() if isinstance(p, Float8Tensor)}
    assert quantized == fp8_linear_names(model)


def test_fp8_blocks_compile_with_their_kernels_tuned_and_bf16_blocks_without(pipeline, monkeypatch):
    """torchao's kernel tuning goes to the FP8 blocks' compile alone (not to a bf16 model's, nor process-wide)."""
    from torchao.quantization import quant_api

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    model = copy.deepcopy(pipeline.transformer).to(torch.bfloat16)
    settings = []
    monkeypatch.setattr(type(model), "compile_repeated_blocks", lambda self, **given: settings.append(given))
    acceleration.compile_blocks(model)
    acceleration.quantize_fp8(model)
    acceleration.compile_blocks(model)
    assert "options" not in settings[0]
    assert settings[1]["options"] == acceleration.FP8_BLOCK_COMPILE_OPTIONS
    assert settings[0]["backend"] == settings[1]["backend"] == "inductor"


def test_fp8_stream_stays_near_the_bf16_stream(pipeline, monkeypatch):
    """--fp8 on the tiny model in bf16 (the CPU runs torch's FP8 matmuls; torchao's hardware check is skipped):
    every group's latents within a few percent of the bf16 stream's and its frames above 35 dB PSNR, yet not equal
    (the matmuls did run in FP8). Quantizing more than the blocks' layers, or a wrong scale, misses the bound."""
    from torchao.quantization import quant_api

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    bf16 = copy.deepcopy(pipeline).to(dtype=torch.bfloat16)
    fp8 = copy.deepcopy(bf16)
    acceleration.quantize_fp8(fp8.transformer)
    for reference, fast in zip(stream(bf16), stream(fp8), strict=True):
        error = acceleration.error_against(fast.frames, fast.latents, (reference.frames, reference.latents))
        assert FP8_MIN_LATENT_ERROR < error["latent_relative_rms_error"] < FP8_MAX_LATENT_ERROR, error
        assert error["frames_psnr_db"] > FP8_MIN_FRAMES_PSNR_DB, error


def test_checkpointing_that_keeps_attention_recomputes_all_but_it_to_the_same_weights(
    tiny_model_dir, tiny_dataset, tmp_path
):
    """Selective checkpointing (args.checkpoint_keeps_attention): the backward recomputes each block but not its
    attention, and the run reaches the weights of plain checkpointing (the same operations, kept or recomputed)."""
    weights, attention_calls = {}, {}
    for keep in (False, True):
        settings = dict(gradient_checkpointing=True, checkpoint_keeps_attention=keep, max_train_steps=2)
        trainer = SwinTrainer(stage3_args(tiny_model_dir, tiny_dataset, tmp_path / f"keep_{keep}", **settings))
        with AttentionCalls() as calls:
            trainer.train()
        model = trainer.accelerator.unwrap_model(trainer.transformer)
        weights[keep] = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        attention_calls[keep] = calls.count
    assert weights[True].keys() == weights[False].keys()
    for name, value in weights[True].items():
        assert torch.equal(value, weights[False][name]), name
    # Plain checkpointing runs each training forward's attention twice (forward, then recomputed); validation
    # and the other forwards without gradients run it once in both runs.
    blocks = len(model.transformer_blocks) + len(model.control_blocks)
    assert attention_calls[False] - attention_calls[True] == 2 * blocks  # one per block in each of the 2 steps


class AttentionCalls(TorchDispatchMode):
    """Counts the attention operators that run (acceleration.ATTENTION_OPERATORS)."""

    count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in acceleration.ATTENTION_OPERATORS
        return func(*args, **(kwargs or {}))


def test_keeping_attention_needs_gradient_checkpointing(tiny_model_dir, tiny_dataset, tmp_path):
    settings = dict(gradient_checkpointing=False, checkpoint_keeps_attention=True)
    with pytest.raises(ConfigError, match="checkpoint_keeps_attention = True without gradient checkpointing"):
        stage3_args(tiny_model_dir, tiny_dataset, tmp_path, **settings).check()


def test_fp8_training_pads_the_rows_to_the_unpadded_layers_result():
    """23 rows (as a window's 23,176 tokens, no multiple of 16) give the outputs and gradients of torchao's layer
    without the padding, which the GPU's FP8 matmuls would refuse (the CPU emulates the casts)."""
    from torchao.float8 import Float8LinearConfig
    from torchao.float8.float8_linear import Float8Linear

    torch.manual_seed(0)
    plain = Float8Linear.from_float(torch.nn.Linear(32, 48), config=Float8LinearConfig(emulate=True))
    padded = copy.deepcopy(plain)
    padded.__class__ = acceleration.row_padded_float8_linear()
    inputs = torch.randn(1, 23, 32)
    results = []
    for layer in (plain, padded):
        given = inputs.clone().requires_grad_()
        output = layer(given)
        output.square().sum().backward()
        results.append((output, given.grad, layer.weight.grad, layer.bias.grad))
    assert results[1][0].shape == (1, 23, 48)
    for expected, actual in zip(*results, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("stage", ["stage 1 LoRA", "stage 3 full"])
def test_fp8_training_trains_the_blocks_layers_and_saves_the_unconverted_model(
    stage, lora_args, tiny_model_dir, tiny_dataset, tmp_path, monkeypatch
):
    """args.fp8_training through the trainer, its FP8 casts emulated on the CPU: the blocks' attention and
    feed-forward layers train through FP8 (under LoRA their frozen base layers, the adapters left in their
    precision), the weights stay within the steps' reach of the unconverted run's, and the saved model (or
    adapter) is an ordinary one (the same names)."""
    monkeypatch.setattr(trainer_module, "check_fp8", lambda setting, device: None)
    converted = []

    def emulated(transformer):
        converted.extend(acceleration.convert_fp8_training(transformer, emulate=True))

    monkeypatch.setattr(trainer_module, "convert_fp8_training", emulated)
    weights, saved = {}, {}
    for fp8 in (False, True):
        settings = dict(fp8_training=fp8, max_train_steps=2)
        if stage == "stage 1 LoRA":
            trainer = LoraTrainer(lora_args(f"fp8_{fp8}", **settings))
        else:
            trainer = SwinTrainer(stage3_args(tiny_model_dir, tiny_dataset, tmp_path / f"fp8_{fp8}", **settings))
        trainer.train()
        model = trainer.accelerator.unwrap_model(trainer.transformer)
        weights[fp8] = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        saved[fp8] = {
            path.relative_to(trainer.final_output): load_file(str(path))
            for path in trainer.final_output.rglob("*.safetensors")
        }
    assert any(name.startswith("transformer_blocks.") for name in converted)
    assert all(re.search(r"\.(attn1?|ff)\.", name) for name in converted)  # attention and feed-forward layers
    assert not any(".lora_" in name for name in converted)
    assert saved[True] and saved[True].keys() == saved[False].keys()
    assert all(saved[True][path].keys() == saved[False][path].keys() for path in saved[True])
    learning_rate = trainer.args.learning_rate
    differing = 0
    for name, value in weights[True].items():
        torch.testing.assert_close(value, weights[False][name], atol=2 * 2 * learning_rate, rtol=0)  # 2 Adam steps
        differing += not torch.equal(value, weights[False][name])
    assert differing  # the FP8 casts changed the gradients


def test_fp8_training_is_refused_before_a_model_loads_on_the_cpu(tiny_model_dir, tiny_dataset, tmp_path):
    trainer = SwinTrainer(stage3_args(tiny_model_dir, tiny_dataset, tmp_path, fp8_training=True))
    with pytest.raises(ConfigError, match="args.fp8_training needs a GPU with FP8 tensor cores .* on the CPU"):
        trainer.setup()
    assert not hasattr(trainer, "transformer")


def test_offloaded_checkpoints_give_the_same_gradients_and_leave_nothing_behind():
    """args.offload_checkpoints: each checkpointed block's hidden-state input goes through the offload (the small
    tensor every block shares stays), comes back in the backward's order with each next one fetched ahead, and
    the gradients are those of plain checkpointing."""

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(16, 16)

        def forward(self, hidden, shared):
            return torch.tanh(self.linear(hidden) * shared) + hidden

    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(Block() for _ in range(4))
    hidden = torch.randn(64, 16, requires_grad=True)  # 4 KiB a block input
    shared = torch.randn(16)  # 64 bytes

    def gradients(run):
        blocks.zero_grad()
        hidden.grad = None
        output = hidden
        for block in blocks:
            output = run(block, output, shared)
        output.square().sum().backward()
        return [hidden.grad.clone(), *(p.grad.clone() for p in blocks.parameters())]

    offload = acceleration.CheckpointOffload(min_bytes=1024)
    offloaded_shapes = []
    pack = offload.pack

    def recorded(tensor):
        entry = pack(tensor)
        if isinstance(entry, acceleration.OffloadedTensor):
            offloaded_shapes.append(tensor.shape)
        return entry

    offload.pack = recorded
    unpack = offload.unpack
    next_fetched = []  # after each unpack: whether the block the backward reaches next is on its way already

    def observed(entry):
        tensor = unpack(entry)
        if isinstance(entry, acceleration.OffloadedTensor) and offload.waiting:
            next_fetched.append(offload.waiting[-1]().on_device is not None)
        return tensor

    offload.unpack = observed
    reference = gradients(acceleration.checkpoint_function(False, None))
    offloaded = gradients(acceleration.checkpoint_function(False, offload))
    assert offloaded_shapes == [hidden.shape] * len(blocks)
    assert next_fetched == [True] * (len(blocks) - 1)
    assert offload.waiting == []
    for expected, actual in zip(reference, offloaded, strict=True):
        torch.testing.assert_close(actual, expected, atol=0, rtol=0)


def test_training_with_offloaded_checkpoints_reaches_the_same_weights(
    tiny_model_dir, tiny_dataset, tmp_path, monkeypatch
):
    """A stage-3 run with args.offload_checkpoints (every block input offloaded, the tiny model's being small)
    reaches the weights of the run without, with kept attention too."""
    monkeypatch.setattr(acceleration, "OFFLOAD_MIN_BYTES", 0)
    packed = []
    pack = acceleration.CheckpointOffload.pack
    monkeypatch.setattr(acceleration.CheckpointOffload, "pack", lambda self, t: packed.append(1) or pack(self, t))
    weights = {}
    for offload in (False, True):
        settings = dict(gradient_checkpointing=True, checkpoint_keeps_attention=True, offload_checkpoints=offload)
        settings["max_train_steps"] = 2
        trainer = SwinTrainer(stage3_args(tiny_model_dir, tiny_dataset, tmp_path / f"offload_{offload}", **settings))
        trainer.train()
        model = trainer.accelerator.unwrap_model(trainer.transformer)
        weights[offload] = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert packed  # the second run's block inputs went through the offload
    for name, value in weights[True].items():
        assert torch.equal(value, weights[False][name]), name


def test_offloading_checkpoints_needs_gradient_checkpointing(tiny_model_dir, tiny_dataset, tmp_path):
    settings = dict(gradient_checkpointing=False, offload_checkpoints=True)
    with pytest.raises(ConfigError, match="offload_checkpoints = True without gradient checkpointing"):
        stage3_args(tiny_model_dir, tiny_dataset, tmp_path, **settings).check()
