"""Model extensions of diffusers' CogVideoX: the interactive transformer and its control embedding table."""

from thematrix.models.control_embedding import (
    compute_clip_control_embeddings,
    compute_control_embeddings,
)
from thematrix.models.interactive_transformer import (
    InteractiveCogVideoXTransformer3DModel,
)

__all__ = [
    "InteractiveCogVideoXTransformer3DModel",
    "compute_clip_control_embeddings",
    "compute_control_embeddings",
]
