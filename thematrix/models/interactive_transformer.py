"""CogVideoX transformer with the Interactive Module (stage 2) and per-frame timesteps (stage 3).

The base model is diffusers' ``CogVideoXTransformer3DModel`` unchanged: its blocks, parameter names
and checkpoints. This subclass adds

- per-latent-frame timesteps: ``timestep`` may be ``[B]`` or ``[B, F]``; every adaLN modulation
  (``norm1``/``norm2`` of each block, ``norm_out``) then modulates the video tokens of frame ``f`` with
  frame ``f``'s time embedding, and the text tokens with the last (noisiest) frame's;
- the Interactive Module: a frozen table of control embeddings (one row per control token plus the
  null control), an MLP ``control_dim -> inner_dim``, and one control block after each transformer
  block from ``control_start_layer`` on. A control block lets the video tokens attend, frame-causally,
  to the ``F`` per-latent-frame control embeddings behind a zero-initialised adaLN gate, so at step 0
  the model is exactly the stage-1 model. Stage 2 builds each with a feed-forward after the attention
  (``control_feed_forward_mult``, also zero-gated): the attention's values are the controls alone, so it
  adds to each token a mixture of control embeddings (one same vector to every token where one control
  frame is visible); the feed-forward's update depends on what each token shows, which the frozen base
  needed to render the keys' effects (``learning/README.md``).

Context parallelism (``thematrix/parallel.py``) is applied from outside through diffusers' ``enable_parallelism``;
``_cp_plan`` names where it splits (``token_layout``): the text tokens, and each frame's video tokens (``[B, F, S, D]``
split along S, so every rank holds every frame and the per-frame modulation and control mask apply unchanged) over
ranks, gathering ``proj_out``'s patches frame by frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

# A model directory records this class under this module's path. diffusers' DiffusionPipeline.from_pretrained
# resolves such an entry from the imported module and picks the load method by the base classes it finds in
# the module's namespace, so ModelMixin must be importable from here.
from diffusers import (
    CogVideoXTransformer3DModel,
    ModelMixin,  # noqa: F401
)
from diffusers.configuration_utils import register_to_config
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.attention import Attention, FeedForward
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.embeddings import (
    PixArtAlphaTextProjection,
    get_1d_sincos_pos_embed_from_grid,
)
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.normalization import AdaLayerNorm, CogVideoXLayerNormZero
from diffusers.utils import apply_lora_scale
from torch import nn

from thematrix.controls import ControlVocabulary
from thematrix.devices import copy_to_device
from thematrix.model_dir import transformer_config

# Prefixes of the Interactive Module's weights in the state dict; everything else is the base model.
CONTROL_TABLE_NAME = "control_embedding_table"
CONTROL_MODULE_PREFIXES = ("control_proj.", "control_blocks.", CONTROL_TABLE_NAME)

MISSING_KEYS_SHOWN = 5  # enough to recognise which part of a checkpoint is absent
PLAIN_CHECKPOINT_HINT = (
    "it looks like a plain CogVideoX transformer: build the interactive one with "
    "InteractiveCogVideoXTransformer3DModel.from_base(CogVideoXTransformer3DModel.from_pretrained(...), vocabulary, "
    "compute_control_embeddings(...))"
)


def config_vocabulary(config: Mapping[str, Any], source: str = "") -> ControlVocabulary:
    """The control vocabulary an interactive transformer's config records."""
    return ControlVocabulary(
        tuple(config["control_tokens"]), tuple(config["control_phrases"]), config["control_null_phrase"], source
    )


def model_vocabulary(model_dir: str | Path) -> ControlVocabulary | None:
    """The control vocabulary of a model directory, read from its transformer config without loading a weight;
    None for a model without controls (stage 1's)."""
    config = transformer_config(model_dir)
    if config["_class_name"] != InteractiveCogVideoXTransformer3DModel.__name__:
        return None
    return config_vocabulary(config, f"the model at {model_dir}")


def _frames(tokens: torch.Tensor, modulation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair video tokens ``[B, N, D]`` with a modulation ``[B, D]`` or ``[B, F, D]`` frame by frame.

    Returns the tokens as ``[B, F, N / F, D]`` (``F = 1`` for a single modulation) and the modulation as
    ``[B, F, 1, D]``, so that an elementwise op applies frame ``f``'s vector to frame ``f``'s tokens without
    copying the vector to every token.
    """
    if modulation.ndim == 2:
        modulation = modulation[:, None]
    return tokens.unflatten(1, (modulation.shape[1], -1)), modulation[:, :, None]


def modulate(tokens: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``tokens * (1 + scale) + shift``, per frame when shift/scale are ``[B, F, D]``."""
    frames, shift = _frames(tokens, shift)
    scale = _frames(tokens, scale)[1]
    return torch.addcmul(shift, frames, 1 + scale).flatten(1, 2)


def gated_add(tokens: torch.Tensor, gate: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """adaLN-zero residual ``tokens + gate * update``, per frame when the gate is ``[B, F, D]``."""
    frames, gate = _frames(tokens, gate)
    return torch.addcmul(frames, gate, update.unflatten(1, frames.shape[1:3])).flatten(1, 2)


class FramewiseLayerNormZero(CogVideoXLayerNormZero):
    """``CogVideoXLayerNormZero`` that also takes one time embedding per latent frame (``temb [B, F, D]``).

    Video tokens of frame ``f`` get frame ``f``'s modulation; text tokens get the last frame's, the noisiest
    one in Swin-DPM. The video gate comes back per token ``[B, N, D]`` so that ``CogVideoXBlock.forward``
    runs unchanged. A ``[B, D]`` embedding takes the parent's code path, bit for bit.
    """

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if temb.ndim == 2:
            return super().forward(hidden_states, encoder_hidden_states, temb)
        # [B, F, 6 * D] -> six [B, F, D]
        shift, scale, gate, enc_shift, enc_scale, enc_gate = self.linear(self.silu(temb)).chunk(6, dim=-1)
        hidden_states = modulate(self.norm(hidden_states), shift, scale)
        encoder_hidden_states = modulate(self.norm(encoder_hidden_states), enc_shift[:, -1], enc_scale[:, -1])
        tokens_per_frame = hidden_states.shape[1] // temb.shape[1]
        gate = gate.repeat_interleave(tokens_per_frame, dim=1)  # [B, N, D]
        return hidden_states, encoder_hidden_states, gate, enc_gate[:, -1:]


class FramewiseAdaLayerNorm(AdaLayerNorm):
    """CogVideoX's output ``AdaLayerNorm`` (``chunk_dim=1``: shift, then scale), also per latent frame."""

    def forward(
        self, x: torch.Tensor, timestep: torch.Tensor | None = None, temb: torch.Tensor | None = None
    ) -> torch.Tensor:
        if temb is None or temb.ndim == 2:
            return super().forward(x, timestep, temb)
        shift, scale = self.linear(self.silu(temb)).chunk(2, dim=-1)  # [B, F, D] each
        return modulate(self.norm(x), shift, scale)


class ControlLayerNormZero(nn.Module):
    """adaLN-zero for a control block: shift, scale and gate from the time embedding, all zero at init."""

    def __init__(self, conditioning_dim: int, embedding_dim: int, eps: float = 1e-5):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(conditioning_dim, 3 * embedding_dim)
        self.norm = nn.LayerNorm(embedding_dim, eps=eps, elementwise_affine=False)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale, gate = self.linear(self.silu(temb)).chunk(3, dim=-1)
        return modulate(self.norm(hidden_states), shift, scale), gate


class ControlBlock(nn.Module):
    """Video tokens (queries) attend to the per-latent-frame control states (keys/values), behind a gate.

    The keys are the ``F`` control states themselves, not a copy per spatial token; a boolean mask
    ``[N, F]`` makes it frame-causal. The gate starts at zero, so a new block adds exactly nothing.
    Unlike CogVideoX's self-attention there is no q/k LayerNorm: over heads x N query rows of 64 it took a
    third of the block's time at 2B size on an H100, and the keys are only ``F`` projected table rows.

    The attention adds to each token a mixture of the control states alone. With ``feed_forward_mult`` > 0 a
    feed-forward (that many times ``dim`` wide, behind its own zero-initialised adaLN gate) follows it, whose
    update depends on each token's content too.
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        time_embed_dim: int,
        attention_bias: bool = True,
        norm_eps: float = 1e-5,
        feed_forward_mult: int = 0,
        activation_fn: str = "gelu-approximate",
    ):
        super().__init__()
        self.norm = ControlLayerNormZero(time_embed_dim, dim, norm_eps)
        self.attn = Attention(
            query_dim=dim,
            cross_attention_dim=dim,
            heads=num_attention_heads,
            dim_head=attention_head_dim,
            bias=attention_bias,
            out_bias=True,
            processor=AttnProcessor2_0(),
        )
        self.ff_norm = ControlLayerNormZero(time_embed_dim, dim, norm_eps) if feed_forward_mult else None
        self.ff = (
            FeedForward(dim, mult=feed_forward_mult, activation_fn=activation_fn, bias=attention_bias)
            if feed_forward_mult
            else None
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        control_states: torch.Tensor,
        temb: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        norm_hidden_states, gate = self.norm(hidden_states, temb)
        attn_output = self.attn(
            norm_hidden_states, encoder_hidden_states=control_states, attention_mask=attention_mask
        )  # [B, N, D]
        hidden_states = gated_add(hidden_states, gate, attn_output)
        if self.ff is not None:
            norm_hidden_states, ff_gate = self.ff_norm(hidden_states, temb)
            hidden_states = gated_add(hidden_states, ff_gate, self.ff(norm_hidden_states))
        return hidden_states


class TokenLayout(nn.Module):
    """Text tokens ``[B, T, D]`` and video tokens frame by frame ``[B, F, S, D]``, returned as they come: the output
    that context parallelism splits over ranks (``_cp_plan``), the text along T and each frame along S."""

    def forward(self, text: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return text, video


class InteractiveCogVideoXTransformer3DModel(CogVideoXTransformer3DModel):
    """CogVideoX transformer conditioned on one control token per latent frame, with per-frame timesteps.

    Parameters: every argument of [`CogVideoXTransformer3DModel`] (CogVideoX 1.0 with sin-cos positions only:
    ``patch_size_t`` must be ``None`` and ``use_rotary_positional_embeddings`` False), plus
        control_dim (`int`, *optional*):
            Width of the control embedding table's rows. Defaults to ``text_embed_dim``, the width of the base
            model's own T5 encoder, which computes the default table (4096 for CogVideoX-2B); 768 for a CLIP
            ViT-L/14 table. Saved resolved.
        control_start_layer (`int`, *optional*):
            First transformer block followed by a control block; blocks ``control_start_layer .. num_layers-1``
            each get one. Defaults to ``num_layers // 2`` (15..29 of the 2B model). Saved resolved.
        control_feed_forward_mult (`int`, defaults to 0):
            Width of a feed-forward after each control block's attention, in multiples of the inner width; 0 (the
            design's block) adds none; stage 2 builds its module with 2. See [`ControlBlock`]: with it the module's
            update depends on the tokens' content, not only on the controls.
        control_tokens (`Sequence[str]`), control_phrases (`Sequence[str]`), control_null_phrase (`str`, *optional*):
            The game's control vocabulary (required; the null phrase defaults to the empty one), kept in the
            config so the token ids of ``controls`` and the rows of ``control_embedding_table`` mean the same
            thing after reloading.
    """

    _no_split_modules = ["CogVideoXBlock", "CogVideoXPatchEmbed", "ControlBlock"]

    # Where diffusers' context parallelism splits tokens over ranks and gathers them (see the module docstring).
    _cp_plan = {
        "token_layout": {
            0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True),  # text [B, T, D]
            1: ContextParallelInput(split_dim=2, expected_dims=4, split_output=True),  # video [B, F, S, D]
        },
        "proj_out": ContextParallelOutput(gather_dim=2, expected_dims=4),
    }

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 30,
        attention_head_dim: int = 64,
        in_channels: int = 16,
        out_channels: int | None = 16,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        time_embed_dim: int = 512,
        ofs_embed_dim: int | None = None,
        text_embed_dim: int = 4096,
        num_layers: int = 30,
        dropout: float = 0.0,
        attention_bias: bool = True,
        sample_width: int = 90,
        sample_height: int = 60,
        sample_frames: int = 49,
        patch_size: int = 2,
        patch_size_t: int | None = None,
        temporal_compression_ratio: int = 4,
        max_text_seq_length: int = 226,
        activation_fn: str = "gelu-approximate",
        timestep_activation_fn: str = "silu",
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        spatial_interpolation_scale: float = 1.875,
        temporal_interpolation_scale: float = 1.0,
        use_rotary_positional_embeddings: bool = False,
        use_learned_positional_embeddings: bool = False,
        patch_bias: bool = True,
        control_dim: int | None = None,
        control_start_layer: int | None = None,
        control_feed_forward_mult: int = 0,
        control_tokens: Sequence[str] | None = None,
        control_phrases: Sequence[str] | None = None,
        control_null_phrase: str = "",
    ):
        if patch_size_t is not None:
            raise ValueError(
                f"{type(self).__name__} conditions on one control per latent frame and needs one token frame per "
                f"latent frame: use a CogVideoX 1.0 transformer (patch_size_t=None, got {patch_size_t})"
            )
        if use_rotary_positional_embeddings:
            raise ValueError(
                f"{type(self).__name__} supports CogVideoX-2B-style transformers, with sin-cos positional embeddings "
                "(use_rotary_positional_embeddings=False); this one uses rotary embeddings (CogVideoX-5B style), which "
                "the interactive pipelines do not pass. Stage 1 trains such a model; stages 2-4 need a 2B-style one"
            )
        super().__init__(
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            time_embed_dim=time_embed_dim,
            ofs_embed_dim=ofs_embed_dim,
            text_embed_dim=text_embed_dim,
            num_layers=num_layers,
            dropout=dropout,
            attention_bias=attention_bias,
            sample_width=sample_width,
            sample_height=sample_height,
            sample_frames=sample_frames,
            patch_size=patch_size,
            patch_size_t=patch_size_t,
            temporal_compression_ratio=temporal_compression_ratio,
            max_text_seq_length=max_text_seq_length,
            activation_fn=activation_fn,
            timestep_activation_fn=timestep_activation_fn,
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
            spatial_interpolation_scale=spatial_interpolation_scale,
            temporal_interpolation_scale=temporal_interpolation_scale,
            use_rotary_positional_embeddings=use_rotary_positional_embeddings,
            use_learned_positional_embeddings=use_learned_positional_embeddings,
            patch_bias=patch_bias,
        )
        inner_dim = num_attention_heads * attention_head_dim
        control_dim = text_embed_dim if control_dim is None else control_dim
        control_start_layer = num_layers // 2 if control_start_layer is None else control_start_layer
        if not 0 <= control_start_layer < num_layers:
            raise ValueError(f"control_start_layer must lie in [0, {num_layers}), got {control_start_layer}")
        self.register_to_config(control_dim=control_dim, control_start_layer=control_start_layer)
        if control_tokens is None or control_phrases is None:
            raise ValueError(
                f"{type(self).__name__} needs the game's control vocabulary: pass control_tokens and control_phrases, "
                "or build it from a plain CogVideoX transformer with from_base(transformer, vocabulary, table)"
            )
        self._control_vocabulary = ControlVocabulary(tuple(control_tokens), tuple(control_phrases), control_null_phrase)

        # 1. Per-frame adaLN: same modules and parameter names as the parent's, so its checkpoints load as is.
        for block in self.transformer_blocks:
            block.norm1 = FramewiseLayerNormZero(time_embed_dim, inner_dim, norm_elementwise_affine, norm_eps)
            block.norm2 = FramewiseLayerNormZero(time_embed_dim, inner_dim, norm_elementwise_affine, norm_eps)
        self.norm_out = FramewiseAdaLayerNorm(
            embedding_dim=time_embed_dim,
            output_dim=2 * inner_dim,
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
            chunk_dim=1,
        )

        # 2. Interactive Module: frozen control table (last row = null control), MLP, control blocks.
        self.register_buffer(
            CONTROL_TABLE_NAME, torch.zeros(len(self._control_vocabulary) + 1, control_dim), persistent=True
        )
        self.control_proj = PixArtAlphaTextProjection(control_dim, inner_dim, act_fn="silu")
        self.control_blocks = nn.ModuleList(
            [
                ControlBlock(
                    dim=inner_dim,
                    num_attention_heads=num_attention_heads,
                    attention_head_dim=attention_head_dim,
                    time_embed_dim=time_embed_dim,
                    attention_bias=attention_bias,
                    norm_eps=norm_eps,
                    feed_forward_mult=control_feed_forward_mult,
                    activation_fn=activation_fn,
                )
                for _ in range(control_start_layer, num_layers)
            ]
        )

        # 3. Where context parallelism splits the tokens over ranks (``_cp_plan``), outside the compiled blocks.
        self.token_layout = TokenLayout()

    @property
    def control_vocabulary(self) -> ControlVocabulary:
        return self._control_vocabulary

    def set_control_embedding_table(self, table: torch.Tensor) -> None:
        """Store a ``[len(vocabulary) + 1, control_dim]`` table (last row = null control) in the weights."""
        expected = tuple(self.control_embedding_table.shape)
        if tuple(table.shape) != expected:
            raise ValueError(
                f"control embedding table has shape {tuple(table.shape)}, expected {expected}: one row per control "
                f"token of {list(self.control_vocabulary.tokens)} plus the null row, of width control_dim="
                f"{self.config.control_dim}; recompute it with compute_control_embeddings for this vocabulary"
            )
        with torch.no_grad():
            self.control_embedding_table.copy_(table)

    def trainable_control_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the Interactive Module (MLP and control blocks); the embedding table is a frozen buffer."""
        yield from self.control_proj.parameters()
        yield from self.control_blocks.parameters()

    def fuse_qkv_projections(self):
        """Not supported: the parent would set its fused joint-attention processor on every attention."""
        raise NotImplementedError(
            "fused QKV would give the control blocks' cross-attention CogVideoX's joint-attention processor; "
            "run unfused"
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' loading, refusing a checkpoint with missing weights instead of leaving them uninitialised."""
        output_loading_info = kwargs.pop("output_loading_info", False)
        config = cls.load_config(pretrained_model_name_or_path, subfolder=kwargs.get("subfolder"))
        if "control_tokens" not in config:
            raise ValueError(
                f"checkpoint {str(pretrained_model_name_or_path)!r} lacks the Interactive Module (no control vocabulary in "
                f"its config, no control weights in its files); {PLAIN_CHECKPOINT_HINT}"
            )
        model, loading_info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        missing = loading_info["missing_keys"]
        if missing:
            hint = (
                PLAIN_CHECKPOINT_HINT
                if all(key.startswith(CONTROL_MODULE_PREFIXES) for key in missing)
                else "it does not match this configuration"
            )
            shown = sorted(missing)[:MISSING_KEYS_SHOWN]
            raise ValueError(
                f"checkpoint {str(pretrained_model_name_or_path)!r} lacks {len(missing)} weights ({shown}...); {hint}"
            )
        # Errors about controls say whose vocabulary it is.
        model._control_vocabulary = dataclasses.replace(
            model.control_vocabulary, source=f"the model at {pretrained_model_name_or_path}"
        )
        return (model, loading_info) if output_loading_info else model

    @classmethod
    def from_base(
        cls,
        transformer: CogVideoXTransformer3DModel,
        vocabulary: ControlVocabulary,
        control_embedding_table: torch.Tensor,
        **control_kwargs: Any,
    ) -> InteractiveCogVideoXTransformer3DModel:
        """Wrap a (stage-1, LoRA-fused) transformer: copy every base weight, set the control table.

        ``control_dim`` comes from the table's width; ``control_kwargs`` may set ``control_start_layer`` and
        ``control_feed_forward_mult``.
        Raises if the base weights and this architecture disagree in any key, naming the keys.
        """
        config = {key: value for key, value in transformer.config.items() if not key.startswith("_")}
        config.update(
            control_dim=control_embedding_table.shape[-1],
            control_tokens=list(vocabulary.tokens),
            control_phrases=list(vocabulary.phrases),
            control_null_phrase=vocabulary.null_phrase,
            **control_kwargs,
        )
        with torch.device(transformer.device):
            model = cls(**config)
        missing, unexpected = model.load_state_dict(transformer.state_dict(), strict=False)
        missing = [key for key in missing if not key.startswith(CONTROL_MODULE_PREFIXES)]
        if missing or unexpected:
            raise ValueError(
                f"cannot build {cls.__name__} from {type(transformer).__name__}: base weights missing "
                f"{missing or 'none'}, unexpected {unexpected or 'none'}. Pass a plain CogVideoX 1.0 transformer "
                f"with every weight present and LoRA adapters fused (stage1/fuse_lora_weights.py)."
            )
        model.set_control_embedding_table(control_embedding_table)
        return model if model.dtype == transformer.dtype else model.to(dtype=transformer.dtype)

    def _time_embedding(
        self,
        timestep: torch.Tensor,
        timestep_cond: torch.Tensor | None,
        ofs: int | float | torch.Tensor | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Time embedding ``[B, D]`` for a ``[B]`` timestep, ``[B, F, D]`` for a per-frame ``[B, F]`` one."""
        # time_proj has no weights and returns float32; time_embedding may run in another dtype.
        emb = self.time_embedding(self.time_proj(timestep.flatten()).to(dtype=dtype), timestep_cond)
        emb = emb.view(*timestep.shape, -1)  # [B, D] or [B, F, D]
        if self.ofs_embedding is not None:
            ofs_emb = self.ofs_embedding(self.ofs_proj(ofs).to(dtype=dtype))  # [B, D]
            emb = emb + (ofs_emb[:, None] if emb.ndim == 3 else ofs_emb)
        return emb

    def _control_states(
        self, controls: torch.Tensor | None, batch_size: int, num_frames: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """Control token ids ``[B, F]`` (``None`` = all null) -> control states ``[B, F, inner_dim]``."""
        null_id = self.control_vocabulary.null_id
        device = self.control_embedding_table.device
        if controls is None:
            controls = torch.full((batch_size, num_frames), null_id, dtype=torch.long, device=device)
        if tuple(controls.shape) != (batch_size, num_frames):
            raise ValueError(
                f"controls must be [batch, latent frames] = [{batch_size}, {num_frames}] token ids, got "
                f"{tuple(controls.shape)}"
            )
        if controls.min() < 0 or controls.max() > null_id:
            raise ValueError(
                f"control ids must lie in [0, {null_id}] ({null_id} = null) for the vocabulary "
                f"{list(self.control_vocabulary.tokens)}, got {controls.tolist()}"
            )
        # Checked above where they are: ids on the CPU cost the GPU nothing, ids on the GPU make the host wait for it.
        controls = copy_to_device(controls, device)
        embeddings = self.control_embedding_table[controls].to(dtype)  # [B, F, control_dim]
        # Sinusoidal frame index on the keys: a frame can tell its own control from earlier ones.
        inner_dim = self.config.num_attention_heads * self.config.attention_head_dim
        position = get_1d_sincos_pos_embed_from_grid(inner_dim, torch.arange(num_frames, device=device))
        return self.control_proj(embeddings) + position.to(dtype)  # [B, F, inner_dim]

    def _control_mask(
        self, tokens_per_frame: int, num_frames: int, batch_size: int, device: torch.device
    ) -> torch.Tensor:
        """Boolean mask ``[B * heads, N, F]``: a token of latent frame f sees the controls of frames <= f.

        Expanded (stride 0) to ``B * heads`` rows so ``Attention.prepare_attention_mask`` does not copy it per head.
        """
        frame_causal = torch.ones(num_frames, num_frames, dtype=torch.bool, device=device).tril()
        token_mask = frame_causal.repeat_interleave(tokens_per_frame, dim=0)  # [N, F]
        heads = self.config.num_attention_heads
        return token_mask.expand(batch_size * heads, -1, -1)

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: int | float | torch.Tensor,
        controls: torch.LongTensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        ofs: int | float | torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> tuple[torch.Tensor] | Transformer2DModelOutput:
        """Denoise ``hidden_states [B, F, C, H, W]`` given text ``[B, T, D]``, timesteps and controls.

        ``timestep``: ``[B]`` (as CogVideoX) or ``[B, F]``, one per latent frame. ``controls``: ``[B, F]`` token ids
        of ``control_vocabulary`` (its ``null_id`` for no control), or ``None`` for all null; on the CPU (a stream's
        choice: checking them there does not wait for the GPU) or on the model's device.
        """
        batch_size, num_frames, channels, height, width = hidden_states.shape
        timestep = torch.as_tensor(timestep, device=hidden_states.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch_size)
        if timestep.shape not in ((batch_size,), (batch_size, num_frames)):
            raise ValueError(
                f"timestep must be [batch] or [batch, latent frames] = [{batch_size}, {num_frames}], "
                f"got {tuple(timestep.shape)}"
            )

        # 1. Time embedding: [B, D], or [B, F, D] for per-frame timesteps
        emb = self._time_embedding(timestep, timestep_cond, ofs, hidden_states.dtype)

        # 2. Patch embedding: [B, T + F * S, inner_dim], S = tokens per latent frame
        hidden_states = self.patch_embed(encoder_hidden_states, hidden_states)
        hidden_states = self.embedding_dropout(hidden_states)

        text_seq_length = encoder_hidden_states.shape[1]
        encoder_hidden_states, hidden_states = self.token_layout(
            hidden_states[:, :text_seq_length], hidden_states[:, text_seq_length:].unflatten(1, (num_frames, -1))
        )  # [B, T, inner_dim], [B, F, S, inner_dim]
        # Both parts are views into the embeddings of all tokens. Copied to the strides every block returns (those
        # of a batch of one too, which .contiguous() leaves as they are), one compiled block graph serves the first
        # block as well (args.compile_blocks, --compile), which otherwise compiles a graph of its own.
        hidden_states = hidden_states.flatten(1, 2).clone(memory_format=torch.contiguous_format)  # [B, F * S, D]
        encoder_hidden_states = encoder_hidden_states.clone(memory_format=torch.contiguous_format)
        tokens_per_frame = hidden_states.shape[1] // num_frames

        # 3. Controls: states [B, F, inner_dim] and the frame-causal mask [B * heads, F * S, F]
        control_states = self._control_states(controls, batch_size, num_frames, hidden_states.dtype)
        control_mask = self._control_mask(tokens_per_frame, num_frames, batch_size, hidden_states.device)

        # 4. Transformer blocks; from control_start_layer on, each is followed by its control block
        checkpointing = torch.is_grad_enabled() and self.gradient_checkpointing
        first_control_layer = self.config.control_start_layer
        for i, block in enumerate(self.transformer_blocks):
            block_args = (hidden_states, encoder_hidden_states, emb, image_rotary_emb, attention_kwargs)
            if checkpointing:
                hidden_states, encoder_hidden_states = self._gradient_checkpointing_func(block, *block_args)
            else:
                hidden_states, encoder_hidden_states = block(*block_args)
            if i >= first_control_layer:
                control_block = self.control_blocks[i - first_control_layer]
                control_args = (hidden_states, control_states, emb, control_mask)
                if checkpointing:
                    hidden_states = self._gradient_checkpointing_func(control_block, *control_args)
                else:
                    hidden_states = control_block(*control_args)

        hidden_states = self.norm_final(hidden_states)

        # 5. Final block: per-frame adaLN, projection to patches [B, F, S, p * p * C_out]
        hidden_states = self.norm_out(hidden_states, temb=emb)
        hidden_states = self.proj_out(hidden_states.unflatten(1, (num_frames, -1)))

        # 6. Unpatchify: [B, F, C_out, H, W]
        p = self.config.patch_size
        output = hidden_states.reshape(batch_size, num_frames, height // p, width // p, -1, p, p)
        output = output.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)

        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)
