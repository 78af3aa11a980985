"""Context parallelism for the interactive transformer: one forward's tokens split over N processes (GPUs), through
diffusers' own ``ModelMixin.enable_parallelism`` and ``ContextParallelConfig`` (Ulysses or ring attention).

The transformer's ``_cp_plan`` (thematrix/models/interactive_transformer.py) splits each latent frame's S video tokens
and the T text tokens over the N ranks and gathers the output patches. CogVideoX's joint attention over
``[text ; video]`` calls ``F.scaled_dot_product_attention`` itself; ``JointAttentionProcessor`` computes the same
attention through diffusers' ``dispatch_attention_fn``, which runs it over every rank's tokens. Attention does not
depend on the order of its keys, so every rank's ``[text_r ; video_r]`` tokens together are the whole sequence. The
interactive transformer has no rotary embeddings (its positions are added before the split), and its control blocks
attend from each rank's video tokens to all F control states, which every rank holds.

Every rank runs the same forwards with the same seed, so their windows stay equal; only rank 0 holds the VAE's
weights: it encodes the initial clip and sends its latent distribution to the others (``broadcast_from_main``), and it
alone decodes and yields the frames, on its own GPU or on one outside the group (``--decode_device cuda:N``, N the
degree), while the other ranks go on with the next group's forwards.

Ulysses only: diffusers' ring attention needs the attention's log-sum-exp, which its native (SDPA) backend does not
return. Ulysses splits the heads and the tokens over the ranks. A degree that divides the heads (30 for CogVideoX-2B),
the text tokens (226) and each latent frame's tokens (30 x 45 = 1,350 at 480x720) takes diffusers' plain Ulysses
(2 for CogVideoX-2B at 480x720); any other takes its ``ulysses_anything`` mode, which splits the tokens unevenly
(``tensor_split``: 57, 57, 56, 56 text tokens on 4 ranks) and pads the heads to a multiple of the degree on the last
rank (30 heads on 4 ranks: 8 each, 2 of them zeros). Its all-to-alls first exchange each rank's token count: a few
small collectives more per attention, and forward only (inference); dynamo cannot trace them, so compiled blocks
run that attention eagerly between two graphs. diffusers takes a padding only if it is smaller
than a rank's heads, so the degree must satisfy ``(-heads) % N < ceil(heads / N)`` (CogVideoX-2B: 2, 3, 4, 5, 6, 8,
10, 15 or 30; not 7 or 9), and every part must have at least N tokens. It runs over NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import os

import torch
from diffusers import ContextParallelConfig
from diffusers.models.attention_dispatch import dispatch_attention_fn

from thematrix.config import ConfigError
from thematrix.precompile import is_precompiled

LOCAL_RANK_VARIABLE = "LOCAL_RANK"  # set by torchrun for each process it starts
WORLD_SIZE_VARIABLE = "WORLD_SIZE"


class JointAttentionProcessor:
    """CogVideoX's joint self-attention over ``[text ; video]`` (diffusers' ``CogVideoXAttnProcessor2_0`` for a model
    without rotary embeddings) through ``dispatch_attention_fn``, so that context parallelism can split its tokens."""

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None or image_rotary_emb is not None:
            raise ValueError("JointAttentionProcessor serves the interactive transformer: no mask, no rotary embedding")
        text_seq_length = encoder_hidden_states.shape[1]
        tokens = torch.cat([encoder_hidden_states, hidden_states], dim=1)  # [B, T + N, D]
        # [B, T + N, heads, head_dim], the layout dispatch_attention_fn takes
        query, key, value = (
            project(tokens).unflatten(-1, (attn.heads, -1)) for project in (attn.to_q, attn.to_k, attn.to_v)
        )
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        attend = attention_outside_graphs if splits_unevenly(self._parallel_config) else dispatch_attention_fn
        output = attend(query, key, value, backend=self._attention_backend, parallel_config=self._parallel_config)
        output = attn.to_out[1](attn.to_out[0](output.flatten(2, 3)))
        encoder_hidden_states, hidden_states = output.split([text_seq_length, output.shape[1] - text_seq_length], dim=1)
        return hidden_states, encoder_hidden_states


@torch.compiler.disable
def attention_outside_graphs(*args, **kwargs) -> torch.Tensor:
    """``dispatch_attention_fn`` run eagerly inside compiled blocks: ``ulysses_anything``'s all-to-alls pass a process
    group, which dynamo cannot trace (torch 2.11), so a compiled block breaks its graph around the attention there."""
    return dispatch_attention_fn(*args, **kwargs)


def splits_unevenly(parallel_config) -> bool:
    """Whether a model's (or processor's) parallel config takes diffusers' uneven Ulysses (``ulysses_anything``)."""
    return parallel_config is not None and parallel_config.context_parallel_config.ulysses_anything


def heads_pad_evenly(heads: int, degree: int) -> bool:
    """Whether diffusers' Ulysses can split ``heads`` over ``degree`` ranks: evenly, or padded on the last rank by
    fewer heads than a rank's share (``ulysses_anything``)."""
    return -heads % degree < -(-heads // degree)


def check_context_parallel(degree: int, heads: int, text_tokens: int, frame_tokens: int, window: str) -> bool:
    """Refuse a degree diffusers' Ulysses attention cannot split the forward over (``--context_parallel``), before
    anything loads; return whether it splits every part evenly (plain Ulysses) rather than with ``ulysses_anything``."""
    if degree < 2:
        raise ConfigError(
            f"--context_parallel {degree}: context parallelism splits each forward over at least 2 processes; pass "
            "N >= 2 and launch with torchrun --nproc_per_node N"
        )
    if not heads_pad_evenly(heads, degree):
        raise ConfigError(
            f"--context_parallel {degree}: {heads} attention heads on {degree} ranks need {-heads % degree} padding "
            f"heads, and diffusers' uneven Ulysses pads fewer than a rank's share; pass one of "
            f"{[n for n in range(2, heads + 1) if heads_pad_evenly(heads, n)]}"
        )
    parts = {"text tokens": text_tokens, f"tokens of each latent frame ({window})": frame_tokens}
    too_few = [f"{count} {what}" for what, count in parts.items() if count < degree]
    if too_few:
        raise ConfigError(
            f"--context_parallel {degree}: {' and '.join(too_few)} cannot give each of {degree} ranks one; pass a "
            "smaller degree or a larger frame size"
        )
    launched = os.environ.get(WORLD_SIZE_VARIABLE)
    if launched != str(degree):
        raise ConfigError(
            f"--context_parallel {degree}: launch it with torchrun --nproc_per_node {degree} (found "
            f"{WORLD_SIZE_VARIABLE}={launched}), one process per GPU"
        )
    if torch.cuda.device_count() < degree:
        raise ConfigError(
            f"--context_parallel {degree}: this machine has {torch.cuda.device_count()} CUDA GPUs; each process "
            "needs its own"
        )
    return all(count % degree == 0 for count in (heads, text_tokens, frame_tokens))


def check_decode_device_outside_group(degree: int, decode_device: torch.device) -> None:
    """Refuse a decode device that is one of the context-parallel ranks' GPUs (rank r runs on cuda:r): rank 0's
    decoder must have a GPU of its own to decode while every rank runs the next group's forwards."""
    if decode_device.type == "cuda" and decode_device.index < degree:
        raise ConfigError(
            f"--decode_device {decode_device} with --context_parallel {degree}: cuda:0 to cuda:{degree - 1} run the "
            f"context-parallel ranks' forwards; pass --decode_device cuda:{degree} (a GPU outside the group), or "
            "drop --decode_device (rank 0 decodes on its own GPU)"
        )


def init_context_parallel_process() -> torch.device:
    """Join torchrun's process group over NCCL and return this process's GPU."""
    device = torch.device("cuda", int(os.environ[LOCAL_RANK_VARIABLE]))
    torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl", device_id=device)
    return device


def is_main_process() -> bool:
    """Rank 0 of a context-parallel stream, or the only process: the one that writes the frames."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def enable_context_parallel(transformer, degree: int, splits_evenly: bool = True) -> None:
    """Split ``transformer``'s forward over ``degree`` processes of the initialised process group (torchrun) with
    Ulysses attention (diffusers' ``enable_parallelism``); ``splits_evenly=False`` (``check_context_parallel``'s
    answer) takes its ``ulysses_anything`` mode for uneven splits. Before ``compile_blocks``, which compiles the
    attention of the split it finds (on an uneven one, outside its graphs)."""
    if any(block._compiled_call_impl is not None or is_precompiled(block) for block in transformer.transformer_blocks):
        raise ValueError("enable context parallelism before compiling the transformer's blocks, which read the split")
    for block in transformer.transformer_blocks:
        block.attn1.set_processor(JointAttentionProcessor())
    config = ContextParallelConfig(ulysses_degree=degree, ulysses_anything=not splits_evenly)
    transformer.enable_parallelism(config=config)


def is_context_parallel(model) -> bool:
    """Whether ``model``'s forward is split over processes (``enable_context_parallel``)."""
    return model._parallel_config is not None


def broadcast_from_main(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as rank 0 holds it, on every rank (in place: the others pass a tensor of its shape and dtype)."""
    torch.distributed.broadcast(tensor, src=0)
    return tensor
