"""Stage 2 settings: the shared training settings plus the Interactive Module's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from thematrix.controls import DEFAULT_VOCABULARY, ControlVocabulary
from thematrix.training.arguments import TrainingArgs


@dataclass
class SftArgs(TrainingArgs):
    output_dir: str = "outputs/stage2"
    learning_rate: float = 1e-4  # only the new, zero-initialised control blocks train
    # The game's keys: one token per key combination, each with a phrase the text encoder embeds once.
    control_tokens: tuple[str, ...] = DEFAULT_VOCABULARY.tokens
    control_phrases: tuple[str, ...] = DEFAULT_VOCABULARY.phrases
    clip_text_model_path: Optional[str] = None  # embed phrases with this local CLIP text model instead of T5
    control_start_layer: Optional[int] = None  # first block followed by a control block; None = num_layers // 2
    control_p_zero: float = 0.1  # chance a clip trains with null controls, for control guidance
    validation_controls: tuple[str, ...] = ("D", "D", "DL", "DL", "DR", "DR")  # cycled over the latent frames
    validation_control_guidance_scale: float = 1.0

    def vocabulary(self) -> ControlVocabulary:
        return ControlVocabulary(tuple(self.control_tokens), tuple(self.control_phrases))
