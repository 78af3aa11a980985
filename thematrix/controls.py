"""Control vocabularies: the player's keys as tokens, each with a phrase a text encoder can embed.

A game's footage carries one control token per video frame (``"D,D,DL,..."``). The model is
conditioned on one token per *latent* frame: the token of every ``temporal_compression``-th
sampled frame, matching the VAE's compression of time.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Mapping, Sequence

CONTROL_SEPARATOR = ","

# The reference's car-driving vocabulary: D drive, B brake/reverse, N neutral (no pedal),
# each straight, turning left (L) or turning right (R).
CAR_RACING_CONTROLS: dict[str, str] = {
    "D": "The car is driving straight ahead.",
    "DL": "The car is driving ahead and turning left.",
    "DR": "The car is driving ahead and turning right.",
    "B": "The car is braking or reversing straight back.",
    "BL": "The car is braking or reversing and turning left.",
    "BR": "The car is braking or reversing and turning right.",
    "N": "The car is rolling without pressing any pedal.",
    "NL": "The car is rolling without pedals and turning left.",
    "NR": "The car is rolling without pedals and turning right.",
}


class ControlError(ValueError):
    """A control string or token that the vocabulary cannot take."""


@dataclass(frozen=True)
class ControlVocabulary:
    """Ordered control tokens and their phrases; id ``len(tokens)`` is the null (dropped) control."""

    tokens: tuple[str, ...]
    phrases: tuple[str, ...]
    null_phrase: str = ""

    def __post_init__(self):
        if not self.tokens:
            raise ControlError("a control vocabulary needs at least one token")
        if len(self.tokens) != len(self.phrases):
            raise ControlError(f"{len(self.tokens)} control tokens but {len(self.phrases)} phrases")
        if len(set(self.tokens)) != len(self.tokens):
            raise ControlError(f"control tokens repeat: {list(self.tokens)}")
        for token in self.tokens:
            if not token or CONTROL_SEPARATOR in token or token != token.strip():
                raise ControlError(
                    f"control token {token!r} must be non-empty, without spaces at its ends and without "
                    f"{CONTROL_SEPARATOR!r}"
                )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str], null_phrase: str = "") -> "ControlVocabulary":
        return cls(tuple(mapping), tuple(mapping.values()), null_phrase)

    def to_mapping(self) -> dict[str, str]:
        return dict(zip(self.tokens, self.phrases))

    @property
    def null_id(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def token_id(self, token: str) -> int:
        try:
            return self.tokens.index(token)
        except ValueError:
            close = difflib.get_close_matches(token, self.tokens, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ControlError(
                f"unknown control token {token!r}; the vocabulary has {list(self.tokens)}.{hint}"
            ) from None

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.token_id(token) for token in tokens]

    def parse(self, control_string: str) -> list[str]:
        """Split ``"D, D,DL"`` into tokens, checking each against the vocabulary."""
        tokens = [token.strip() for token in control_string.split(CONTROL_SEPARATOR)]
        if any(not token for token in tokens):
            raise ControlError(f"empty control token in {control_string!r}; separate tokens with single commas")
        self.encode(tokens)
        return tokens


def latent_frame_controls(frame_tokens: Sequence[str], temporal_compression: int) -> list[str]:
    """One token per latent frame: the tokens of sampled frames ``0, c, 2c, ...`` of a ``c*k+1`` clip."""
    if (len(frame_tokens) - 1) % temporal_compression:
        raise ControlError(
            f"{len(frame_tokens)} per-frame controls do not form a clip of {temporal_compression}k+1 frames"
        )
    return list(frame_tokens[::temporal_compression])


DEFAULT_VOCABULARY = ControlVocabulary.from_mapping(CAR_RACING_CONTROLS)


def video_frame_labels(latent_tokens: Sequence[str], temporal_compression: int) -> list[str]:
    """The control active in each video frame: video frame 0 shows latent frame 0, then each latent frame covers
    ``temporal_compression`` video frames (``1 + c * (F - 1)`` frames in all)."""
    return [latent_tokens[(frame + temporal_compression - 1) // temporal_compression]
            for frame in range(1 + temporal_compression * (len(latent_tokens) - 1))]


def cycle_controls(tokens: Sequence[str], count: int) -> list[str]:
    """``count`` tokens repeating ``tokens``: a short pattern drives a clip of any length."""
    return [tokens[index % len(tokens)] for index in range(count)]
