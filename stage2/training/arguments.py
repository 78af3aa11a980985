"""Stage 2 settings: the shared training settings plus the Interactive Module's."""

from __future__ import annotations

from dataclasses import dataclass

from thematrix.config import ConfigError, LocalPath
from thematrix.controls import ControlVocabulary
from thematrix.training.arguments import TrainingArgs

SETTINGS_SOURCE = "the settings args.control_tokens and args.control_phrases"


@dataclass
class SftArgs(TrainingArgs):
    output_dir: str = "outputs/stage2"
    learning_rate: float = 1e-4  # only the new, zero-initialised control blocks train
    # The game's keys: one token per key combination, each with a phrase the text encoder embeds once. Default: the
    # input model's vocabulary, else the footage's (DATA_ROOT/vocabulary.json); all that are given must agree.
    control_tokens: tuple[str, ...] | None = None
    control_phrases: tuple[str, ...] | None = None  # one per control token, in the same order
    clip_text_model_path: LocalPath | None = None  # embed phrases with this local CLIP text model instead of T5
    control_start_layer: int | None = None  # first block followed by a control block; None = num_layers // 2
    # A feed-forward this many times the width after each control block's attention, so the module's update depends
    # on the video's content and not only on the controls; 0 = none (DESIGN.md's block). With the recipe's frozen
    # base, the mini chain's clips showed the pedals' effect on the speed only with it, and followed the keys about
    # twice as often (learning/README.md); at 2B, width 2 adds 221M weights and, by count, 5.5% to a stream window's
    # FLOPs. Like control_start_layer, it shapes a new module: a stage-2 model given as input keeps its own.
    control_feed_forward_mult: int = 2
    control_p_zero: float = 0.1  # chance a clip trains with null controls, for control guidance
    # The recipe trains only the Interactive Module, the base frozen. True trains every weight at learning_rate: for a
    # base that cannot render what the controls change (learning/README.md), not the recipe's setting.
    train_base_weights: bool = False
    # Tokens cycled over the latent frames of a validation video; default: every token in turn, each held 2 latent frames.
    validation_controls: tuple[str, ...] | None = None
    validation_control_guidance_scale: float = 1.0

    def vocabulary(self) -> ControlVocabulary | None:
        """The vocabulary ``control_tokens`` and ``control_phrases`` give, or None when they are unset."""
        if self.control_tokens is None and self.control_phrases is None:
            return None
        if self.control_tokens is None or self.control_phrases is None:
            raise ConfigError(
                "args.control_tokens and args.control_phrases are set together (one phrase per token) or not at all "
                "(the model's or the footage's vocabulary is then used)"
            )
        return ControlVocabulary(tuple(self.control_tokens), tuple(self.control_phrases), source=SETTINGS_SOURCE)

    def check(self) -> None:
        super().check()
        self.vocabulary()
        if self.control_feed_forward_mult < 0:
            raise ConfigError(
                f"args.control_feed_forward_mult is a width multiple, 0 (no feed-forward) or more; got "
                f"{self.control_feed_forward_mult}"
            )
        if not 0 <= self.control_p_zero <= 1:
            raise ConfigError(f"args.control_p_zero is a probability, in [0, 1]; got {self.control_p_zero}")
