"""The control embedding table: one text-encoder vector per control phrase, plus the null phrase's.

The table is computed once when stage 2 starts and stored in the transformer's weights
(``control_embedding_table``), so later stages and inference need no encoder and run offline.

Default encoder: the base model's own T5 encoder, which every CogVideoX model directory ships; the
pipeline has no CLIP. T5 gives one vector per token, so a phrase's vector is the mean over its
non-padding tokens. The reference used CLIP ViT-L/14's pooled text features (768-d);
``compute_clip_control_embeddings`` reproduces that from a local CLIP directory.
"""

from __future__ import annotations

import os

import torch
from transformers import (
    CLIPTextModel,
    CLIPTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from thematrix.controls import ControlVocabulary

# CogVideoX's max_text_seq_length: the longest prompt its T5 encoder is used with.
T5_MAX_LENGTH = 226


def _phrases(vocabulary: ControlVocabulary) -> list[str]:
    """Phrases in table-row order: the tokens' phrases, then the null phrase (row ``null_id``)."""
    return [*vocabulary.phrases, vocabulary.null_phrase]


def _tokenize(tokenizer: PreTrainedTokenizerBase, phrases: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize, padded to the longest phrase; a phrase that would be cut is an error, not a silent truncation."""
    too_long = [phrase for phrase, ids in zip(phrases, tokenizer(phrases).input_ids) if len(ids) > max_length]
    if too_long:
        raise ValueError(
            f"control phrases longer than {max_length} tokens: {too_long}; shorten them in the control vocabulary"
        )
    return tokenizer(phrases, padding="longest", return_tensors="pt")


@torch.no_grad()
def compute_control_embeddings(
    vocabulary: ControlVocabulary,
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: PreTrainedModel,
    max_length: int = T5_MAX_LENGTH,
) -> torch.Tensor:
    """Table ``[len(vocabulary) + 1, d_model]`` (float32, CPU): each phrase's T5 states averaged over its tokens.

    The attention mask keeps padding out of both the encoder's attention and the mean, so a phrase's vector does
    not depend on the other phrases it is batched with. The encoder runs in the dtype it was loaded in (load it in
    float32 for a table that does not depend on that); pooling is float32.
    """
    inputs = _tokenize(tokenizer, _phrases(vocabulary), max_length)
    mask = inputs["attention_mask"].to(text_encoder.device)
    states = text_encoder(input_ids=inputs["input_ids"].to(text_encoder.device), attention_mask=mask)
    states = states.last_hidden_state.float()  # [len + 1, L, d_model]
    weights = mask[..., None].float()
    return ((states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)).cpu()


@torch.no_grad()
def compute_clip_control_embeddings(
    vocabulary: ControlVocabulary, clip_text_model_path: str | os.PathLike, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Table ``[len(vocabulary) + 1, hidden]`` (float32, CPU) of CLIP's pooled text features (the reference's).

    ``clip_text_model_path`` is a local directory holding a ``CLIPTextModel`` and its tokenizer (for example a
    download of openai/clip-vit-large-patch14); nothing is fetched.
    """
    if not os.path.isdir(clip_text_model_path):
        raise FileNotFoundError(
            f"clip_text_model_path {str(clip_text_model_path)!r} is not a directory; point it at a local copy of a "
            f"CLIP text model with its tokenizer, or use the base model's T5 encoder (compute_control_embeddings)"
        )
    tokenizer = CLIPTokenizer.from_pretrained(clip_text_model_path, local_files_only=True)
    text_model = CLIPTextModel.from_pretrained(clip_text_model_path, local_files_only=True, dtype=torch.float32).to(
        device
    )
    inputs = _tokenize(tokenizer, _phrases(vocabulary), tokenizer.model_max_length)
    outputs = text_model(**{name: tensor.to(device) for name, tensor in inputs.items()})
    return outputs.pooler_output.float().cpu()
