"""Context parallelism for the interactive transformer: one forward's tokens split over N processes (GPUs), through
diffusers' own ``ModelMixin.enable_parallelism`` and ``ContextParallelConfig`` (Ulysses or ring attention).

The transformer's ``_cp_plan`` (thematrix/models/interactive_transformer.py) splits each latent frame's S video tokens
and the T text tokens over the N ranks and gathers the output patches. CogVideoX's joint attention over
``[text ; video]`` calls ``F.scaled_dot_product_attention`` itself; ``JointAttentionProcessor`` computes the same
attention through diffusers' ``dispatch_attention_fn``, which runs it over every rank's tokens. Attention does not
depend on the order of its keys, so every rank's ``[text_r ; video_r]`` tokens together are the whole sequence. The
interactive transformer has no rotary embeddings (its positions are added before the split), and its control blocks
attend from each rank's video tokens to all F control states, which every rank holds.

Every rank runs the same stream with the same seed: the gathered output is the same on every rank, so their windows
stay equal and each could show the frames; the front ends write them on rank 0.

Ulysses only: diffusers' ring attention needs the attention's log-sum-exp, which its native (SDPA) backend does not
return. Ulysses splits the heads too, so N must divide the heads (30 for CogVideoX-2B: N = 2, 3, 5 or 6), the text
tokens (226) and each latent frame's tokens (30 x 45 = 1,350 at 480x720). It runs over NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import os

import torch
from diffusers import ContextParallelConfig
from diffusers.models.attention_dispatch import dispatch_attention_fn

from thematrix.config import ConfigError

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
        output = dispatch_attention_fn(
            query, key, value, backend=self._attention_backend, parallel_config=self._parallel_config
        )
        output = attn.to_out[1](attn.to_out[0](output.flatten(2, 3)))
        encoder_hidden_states, hidden_states = output.split([text_seq_length, output.shape[1] - text_seq_length], dim=1)
        return hidden_states, encoder_hidden_states


def check_context_parallel(degree: int, heads: int, text_tokens: int, frame_tokens: int, window: str) -> None:
    """Refuse a degree that does not split the forward evenly (``--context_parallel``), before anything loads."""
    uneven = {
        "attention heads": heads,
        "text tokens": text_tokens,
        f"tokens of each latent frame ({window})": frame_tokens,
    }
    if degree < 2:
        raise ConfigError(
            f"--context_parallel {degree}: context parallelism splits each forward over at least 2 processes; pass "
            "N >= 2 and launch with torchrun --nproc_per_node N"
        )
    uneven = [f"{count} {what}" for what, count in uneven.items() if count % degree]
    if uneven:
        raise ConfigError(
            f"--context_parallel {degree}: Ulysses attention splits the heads and the tokens evenly; "
            f"{' and '.join(uneven)} do not divide by {degree}. Pass a divisor of {heads} (the heads) that divides "
            "the others, or another frame size"
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


def init_context_parallel_process() -> torch.device:
    """Join torchrun's process group over NCCL and return this process's GPU."""
    device = torch.device("cuda", int(os.environ[LOCAL_RANK_VARIABLE]))
    torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl", device_id=device)
    return device


def is_main_process() -> bool:
    """Rank 0 of a context-parallel stream, or the only process: the one that writes the frames."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def enable_context_parallel(transformer, degree: int) -> None:
    """Split ``transformer``'s forward over ``degree`` processes of the initialised process group (torchrun) with
    Ulysses attention (diffusers' ``enable_parallelism``)."""
    for block in transformer.transformer_blocks:
        block.attn1.set_processor(JointAttentionProcessor())
    transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree))
