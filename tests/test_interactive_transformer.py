"""The interactive transformer: exact at init, frame-causal controls, per-frame timesteps, checkpoints, training."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.normalization import AdaLayerNorm, CogVideoXLayerNormZero
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import nn
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

from tests.conftest import TEST_VOCABULARY
from thematrix.controls import ControlVocabulary
from thematrix.models import (
    InteractiveCogVideoXTransformer3DModel,
    compute_clip_control_embeddings,
    compute_control_embeddings,
)
from thematrix.models.interactive_transformer import (
    ControlBlock,
    ControlLayerNormZero,
    FramewiseAdaLayerNorm,
    FramewiseLayerNormZero,
)
from thematrix.presets import COGVIDEOX_2B, TINY

SEED = 0
BATCH, FRAMES = 2, 3
CONFIG = TINY["transformer"]
LATENT_SHAPE = (BATCH, FRAMES, CONFIG["in_channels"], CONFIG["sample_height"], CONFIG["sample_width"])
TEXT_SHAPE = (BATCH, CONFIG["max_text_seq_length"], CONFIG["text_embed_dim"])
TIMESTEPS = torch.tensor([100, 700])
GAME_VOCABULARY = ControlVocabulary(("UP", "LEFT", "FIRE"), ("Jump.", "Walk left.", "Shoot."), "Stand still.")
MIN_EFFECT = 1e-3  # an output change this large is an effect, not rounding
VOCABULARY_CONFIG = dict(control_tokens=TEST_VOCABULARY.tokens, control_phrases=TEST_VOCABULARY.phrases)
MAX_CONTROL_SHARE = 0.2  # of the base model's parameters: the Interactive Module is an add-on, not a second model


@pytest.fixture(scope="module")
def base() -> CogVideoXTransformer3DModel:
    torch.manual_seed(SEED)
    return CogVideoXTransformer3DModel(**CONFIG).eval()


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(SEED)
    return dict(
        hidden_states=torch.randn(LATENT_SHAPE, generator=generator),
        encoder_hidden_states=torch.randn(TEXT_SHAPE, generator=generator),
        timestep=TIMESTEPS,
    )


def random_table(vocabulary: ControlVocabulary) -> torch.Tensor:
    generator = torch.Generator().manual_seed(SEED)
    return torch.randn(len(vocabulary) + 1, CONFIG["text_embed_dim"], generator=generator)


def random_controls(vocabulary: ControlVocabulary = TEST_VOCABULARY) -> torch.Tensor:
    generator = torch.Generator().manual_seed(SEED)
    return torch.randint(0, len(vocabulary), (BATCH, FRAMES), generator=generator)


def perturb_control_gates(model: InteractiveCogVideoXTransformer3DModel) -> InteractiveCogVideoXTransformer3DModel:
    """Give the zero-initialised adaLN of every control block random weights, so the blocks act."""
    perturb_gates(model.control_blocks)
    return model


def perturb_gates(module: nn.Module) -> None:
    """Random weights for every control adaLN (``ControlLayerNormZero``) in ``module``."""
    generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, ControlLayerNormZero):
                for parameter in norm.linear.parameters():
                    parameter.copy_(torch.randn(parameter.shape, generator=generator))


def interactive(base, vocabulary=TEST_VOCABULARY, **control_kwargs) -> InteractiveCogVideoXTransformer3DModel:
    return InteractiveCogVideoXTransformer3DModel.from_base(
        base, vocabulary, random_table(vocabulary), **control_kwargs
    ).eval()


def assert_differs(actual: torch.Tensor, reference: torch.Tensor, message: str = "") -> None:
    assert (actual - reference).abs().max() > MIN_EFFECT, message


@torch.no_grad()
def run(model, inputs, **overrides) -> torch.Tensor:
    return model(**{**inputs, **overrides}).sample


def test_defaults_follow_the_base_config(base):
    model = InteractiveCogVideoXTransformer3DModel.from_config({**base.config, **VOCABULARY_CONFIG})
    assert model.config.control_start_layer == CONFIG["num_layers"] // 2
    assert model.config.control_dim == CONFIG["text_embed_dim"]
    assert len(model.control_blocks) == CONFIG["num_layers"] - CONFIG["num_layers"] // 2
    assert model.control_vocabulary == TEST_VOCABULARY
    assert model.control_embedding_table.shape == (len(TEST_VOCABULARY) + 1, CONFIG["text_embed_dim"])


def test_at_init_output_equals_plain_cogvideox(base, inputs):
    model = interactive(base)
    expected = run(base, inputs)
    assert torch.equal(run(model, inputs), expected)
    assert torch.equal(run(model, inputs, controls=random_controls()), expected)


def test_control_of_frame_f_changes_frame_f_and_no_earlier_frame(base, inputs):
    # A control block only after the last transformer block: nothing after it mixes frames, so the model's
    # output shows the control attention's causality (earlier control blocks reach earlier frames through
    # the base model's bidirectional self-attention, by design of CogVideoX).
    last_layer = CONFIG["num_layers"] - 1
    model = perturb_control_gates(interactive(base, control_start_layer=last_layer))
    controls = random_controls()
    before = run(model, inputs, controls=controls)
    for frame in range(FRAMES):
        changed = controls.clone()
        changed[:, frame] = (controls[:, frame] + 1) % len(TEST_VOCABULARY)
        after = run(model, inputs, controls=changed)
        assert torch.equal(after[:, :frame], before[:, :frame]), f"control of frame {frame} leaked backwards"
        assert_differs(after[:, frame], before[:, frame], f"control of frame {frame} had no effect")


def test_a_frame_tells_its_own_control_from_earlier_ones(base, inputs):
    # Frame 1 sees the controls of frames 0 and 1 in both orders; only their frame positions tell them apart.
    model = perturb_control_gates(interactive(base, control_start_layer=CONFIG["num_layers"] - 1))
    forward = torch.tensor([[0, 1, 2]] * BATCH)
    swapped = torch.tensor([[1, 0, 2]] * BATCH)
    assert_differs(run(model, inputs, controls=forward)[:, 1], run(model, inputs, controls=swapped)[:, 1])


def test_controls_matter_with_default_layers_and_none_means_null(base, inputs):
    model = perturb_control_gates(interactive(base))
    controls = random_controls()
    changed = controls.clone()
    changed[:, -1] = (controls[:, -1] + 1) % len(TEST_VOCABULARY)
    assert_differs(run(model, inputs, controls=changed), run(model, inputs, controls=controls))
    null = torch.full((BATCH, FRAMES), TEST_VOCABULARY.null_id)
    assert torch.equal(run(model, inputs, controls=None), run(model, inputs, controls=null))
    assert_differs(run(model, inputs, controls=None), run(model, inputs, controls=controls))


def test_bad_controls_and_timesteps_are_refused(base, inputs):
    model = interactive(base)
    with pytest.raises(ValueError, match="controls must be"):
        run(model, inputs, controls=torch.zeros(BATCH, FRAMES + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="control ids must lie in"):
        run(model, inputs, controls=torch.full((BATCH, FRAMES), TEST_VOCABULARY.null_id + 1))
    with pytest.raises(ValueError, match="timestep must be"):
        run(model, inputs, timestep=torch.zeros(BATCH, FRAMES + 1, dtype=torch.long))


def test_a_feed_forward_makes_the_control_update_depend_on_each_token():
    """With one control frame every token's attention weight on it is 1, so the attention alone adds the same vector
    to every token; the feed-forward after it adds one that depends on the token."""
    dim, heads, tokens = CONFIG["num_attention_heads"] * CONFIG["attention_head_dim"], CONFIG["num_attention_heads"], 6
    generator = torch.Generator().manual_seed(SEED)
    hidden = torch.randn(1, tokens, dim, generator=generator)
    control = torch.randn(1, 1, dim, generator=generator)
    temb = torch.randn(1, CONFIG["time_embed_dim"], generator=generator)
    mask = torch.ones(heads, tokens, 1, dtype=torch.bool)
    updates = {}
    for mult in (0, 2):
        torch.manual_seed(SEED)
        block = ControlBlock(dim, heads, CONFIG["attention_head_dim"], CONFIG["time_embed_dim"], feed_forward_mult=mult)
        with torch.no_grad():
            assert torch.equal(block(hidden, control, temb, mask), hidden), "a new block adds nothing"
            perturb_gates(block)
            updates[mult] = (block(hidden, control, temb, mask) - hidden)[0]
    torch.testing.assert_close(updates[0], updates[0][:1].expand_as(updates[0]))
    assert_differs(updates[2], updates[2][:1].expand_as(updates[2]), "the feed-forward's update is the same everywhere")


def test_save_and_load_round_trip(base, inputs, tmp_path):
    model = perturb_control_gates(
        interactive(base, GAME_VOCABULARY, control_start_layer=1, control_feed_forward_mult=2)
    )
    controls = random_controls(GAME_VOCABULARY)
    model.save_pretrained(tmp_path)
    loaded = InteractiveCogVideoXTransformer3DModel.from_pretrained(tmp_path).eval()
    assert loaded.control_vocabulary == GAME_VOCABULARY
    assert (loaded.config.control_start_layer, loaded.config.control_feed_forward_mult) == (1, 2)
    assert torch.equal(loaded.control_embedding_table, model.control_embedding_table)
    assert torch.equal(run(loaded, inputs, controls=controls), run(model, inputs, controls=controls))
    saved_config = json.loads((tmp_path / "config.json").read_text())
    assert saved_config["control_tokens"] == list(GAME_VOCABULARY.tokens)


def test_per_frame_timesteps(base, inputs):
    model = perturb_control_gates(interactive(base))
    controls = random_controls()
    per_sample = run(model, inputs, controls=controls)
    uniform = TIMESTEPS[:, None].expand(BATCH, FRAMES)
    torch.testing.assert_close(run(model, inputs, controls=controls, timestep=uniform), per_sample)
    staggered = uniform.clone()
    staggered[:, -1] = 999
    block_time_embeddings = []
    hook = model.transformer_blocks[0].register_forward_pre_hook(
        lambda module, args: block_time_embeddings.append(args[2])
    )
    assert_differs(run(model, inputs, controls=controls, timestep=staggered), per_sample)
    hook.remove()
    # The blocks get one time embedding per latent frame: that of the frame's own timestep.
    with torch.no_grad():
        for frame in range(FRAMES):
            expected = model.time_embedding(model.time_proj(staggered[:, frame]))
            torch.testing.assert_close(block_time_embeddings[0][:, frame], expected)


def test_framewise_norms_modulate_each_frame_and_text_like_the_last_frame():
    torch.manual_seed(SEED)
    time_dim, dim, tokens_per_frame, text_tokens = 8, 16, 5, 4
    video = torch.randn(BATCH, FRAMES * tokens_per_frame, dim)
    text = torch.randn(BATCH, text_tokens, dim)
    temb = torch.randn(BATCH, FRAMES, time_dim)

    framewise = FramewiseLayerNormZero(time_dim, dim)
    plain = CogVideoXLayerNormZero(time_dim, dim)
    plain.load_state_dict(framewise.state_dict())
    out_video, out_text, gate, text_gate = framewise(video, text, temb)
    assert gate.shape == video.shape  # per token, as CogVideoXBlock's residual needs
    for frame in range(FRAMES):
        tokens = slice(frame * tokens_per_frame, (frame + 1) * tokens_per_frame)
        ref_video, ref_text, ref_gate, ref_text_gate = plain(video[:, tokens], text, temb[:, frame])
        torch.testing.assert_close(out_video[:, tokens], ref_video)
        torch.testing.assert_close(gate[:, tokens], ref_gate.expand_as(gate[:, tokens]))
    torch.testing.assert_close(out_text, ref_text)  # ref_* of the last frame
    torch.testing.assert_close(text_gate, ref_text_gate)

    framewise_out = FramewiseAdaLayerNorm(time_dim, output_dim=2 * dim, norm_elementwise_affine=True, chunk_dim=1)
    plain_out = AdaLayerNorm(time_dim, output_dim=2 * dim, norm_elementwise_affine=True, chunk_dim=1)
    plain_out.load_state_dict(framewise_out.state_dict())
    out = framewise_out(video, temb=temb)
    for frame in range(FRAMES):
        tokens = slice(frame * tokens_per_frame, (frame + 1) * tokens_per_frame)
        torch.testing.assert_close(out[:, tokens], plain_out(video[:, tokens], temb=temb[:, frame]))


def test_from_base_refuses_mismatched_weights(base):
    table = random_table(TEST_VOCABULARY)
    incomplete = copy.deepcopy(base)
    del incomplete.proj_out
    with pytest.raises(ValueError, match=r"missing \['proj_out.weight', 'proj_out.bias'\]"):
        InteractiveCogVideoXTransformer3DModel.from_base(incomplete, TEST_VOCABULARY, table)
    extended = copy.deepcopy(base)
    extended.transformer_blocks[0].attn1.to_q.lora_A = nn.Linear(1, 1)
    with pytest.raises(ValueError, match=r"unexpected \['transformer_blocks.0.attn1.to_q.lora_A.weight'"):
        InteractiveCogVideoXTransformer3DModel.from_base(extended, TEST_VOCABULARY, table)
    with pytest.raises(ValueError, match="control embedding table has shape"):
        InteractiveCogVideoXTransformer3DModel.from_base(base, GAME_VOCABULARY, table)


def test_plain_cogvideox_checkpoint_loads_via_from_base(base, inputs, tmp_path):
    base.save_pretrained(tmp_path)
    reloaded = CogVideoXTransformer3DModel.from_pretrained(tmp_path)
    model = interactive(reloaded)
    assert torch.equal(run(model, inputs, controls=random_controls()), run(base, inputs))
    with pytest.raises(ValueError, match="lacks .* weights .*from_base"):
        InteractiveCogVideoXTransformer3DModel.from_pretrained(tmp_path)


def test_only_control_parameters_train_and_checkpointing_matches(base, inputs):
    model = perturb_control_gates(interactive(base))
    model.requires_grad_(False)
    trainable = list(model.trainable_control_parameters())
    for parameter in trainable:
        parameter.requires_grad_(True)
    control_names = {
        name for name, _ in model.named_parameters() if name.startswith(("control_proj.", "control_blocks."))
    }
    assert {id(p) for p in trainable} == {id(p) for n, p in model.named_parameters() if n in control_names}
    assert "control_embedding_table" not in dict(model.named_parameters())

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(**inputs, controls=random_controls()).sample.square().mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in trainable]

    loss, grads = loss_and_grads()
    assert all(grad.abs().sum() > 0 for grad in grads)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in control_names)

    checkpointed = []

    def counting_checkpoint(module, *args):
        checkpointed.append(type(module))
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

    model.enable_gradient_checkpointing(counting_checkpoint)
    checkpointed_loss, checkpointed_grads = loss_and_grads()
    model.disable_gradient_checkpointing()
    assert checkpointed.count(ControlBlock) == len(model.control_blocks)
    assert len(checkpointed) == CONFIG["num_layers"] + len(model.control_blocks)
    torch.testing.assert_close(checkpointed_loss, loss)
    for checkpointed_grad, grad in zip(checkpointed_grads, grads):
        torch.testing.assert_close(checkpointed_grad, grad)


def test_control_module_is_small_at_cogvideox_2b_size():
    with torch.device("meta"):
        model = InteractiveCogVideoXTransformer3DModel(**COGVIDEOX_2B["transformer"], **VOCABULARY_CONFIG)
    control = sum(p.numel() for p in model.trainable_control_parameters())
    total = sum(p.numel() for p in model.parameters())
    base_count = total - control
    print(f"CogVideoX-2B: base {base_count:,} parameters, control module {control:,} ({control / base_count:.1%})")
    assert len(model.control_blocks) == 15
    assert 0 < control < MAX_CONTROL_SHARE * base_count


def word_tokenizer(phrases) -> PreTrainedTokenizerFast:
    """A T5-like word-level tokenizer (pad 0, eos 1) over the phrases' words, built without downloads."""
    words = sorted({word for phrase in phrases for word in phrase.lower().replace(".", " .").split()})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{word: i + 3 for i, word in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(".", " .")])
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def test_t5_control_embeddings_pool_phrases_independently_of_padding():
    torch.manual_seed(SEED)
    encoder = T5EncoderModel(T5Config(**TINY["text_encoder"])).eval()
    tokenizer = word_tokenizer(TEST_VOCABULARY.phrases + GAME_VOCABULARY.phrases + (GAME_VOCABULARY.null_phrase,))
    table = compute_control_embeddings(TEST_VOCABULARY, tokenizer, encoder)
    assert table.shape == (len(TEST_VOCABULARY) + 1, TINY["text_encoder"]["d_model"])
    assert table.dtype == torch.float32
    assert len(set(map(tuple, table.tolist()))) == len(table)
    # The null row is the empty phrase: its only token is </s>.
    torch.testing.assert_close(table[-1], encoder(input_ids=torch.tensor([[1]])).last_hidden_state[0, 0])
    # A phrase gets the same vector whatever it is padded to in its batch.
    short = ControlVocabulary(("D",), (TEST_VOCABULARY.phrases[0],))
    torch.testing.assert_close(compute_control_embeddings(short, tokenizer, encoder)[0], table[0])
    with pytest.raises(ValueError, match="longer than 3 tokens"):
        compute_control_embeddings(TEST_VOCABULARY, tokenizer, encoder, max_length=3)


def test_clip_control_embeddings_from_a_local_directory(tmp_path):
    letters = "abcdefghijklmnopqrstuvwxyz."
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({piece: len(vocab) + i for i, piece in enumerate([*letters, *(c + "</w>" for c in letters)])})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")).save_pretrained(tmp_path)
    torch.manual_seed(SEED)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    CLIPTextModel(config).save_pretrained(tmp_path)
    table = compute_clip_control_embeddings(GAME_VOCABULARY, tmp_path)
    assert table.shape == (len(GAME_VOCABULARY) + 1, config.hidden_size)
    assert len(set(map(tuple, table.tolist()))) == len(table)
    with pytest.raises(FileNotFoundError, match="clip_text_model_path"):
        compute_clip_control_embeddings(GAME_VOCABULARY, tmp_path / "missing")
