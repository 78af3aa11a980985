"""Stage 2: train the Interactive Module on game clips and their controls. Run through train_text_to_video_sft.sh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import CogVideoXTransformer3DModel

from stage2.cogvideox.pipeline_cogvideox import InteractivePipeline
from stage2.cogvideox.scheduler import InteractiveScheduler
from stage2.training.arguments import SftArgs
from thematrix.cli import run
from thematrix.config import ConfigError
from thematrix.controls import (
    VOCABULARY_FILE,
    ControlError,
    agreed_vocabulary,
    cycle_controls,
    data_root_vocabulary,
    default_control_pattern,
    video_frame_labels,
)
from thematrix.model_dir import transformer_class_name
from thematrix.models import (
    InteractiveCogVideoXTransformer3DModel,
    compute_clip_control_embeddings,
    compute_control_embeddings,
)
from thematrix.models.interactive_transformer import model_vocabulary
from thematrix.training.trainer import Trainer, draw_dropout
from thematrix.video import pipeline_video_to_signed

DEFAULT_CONFIG = Path(__file__).parent / "training" / "sft_config.py"
BASE_CLASS = CogVideoXTransformer3DModel.__name__
INTERACTIVE_CLASS = InteractiveCogVideoXTransformer3DModel.__name__


class InteractiveTrainer(Trainer):
    """Adds control blocks to the fused stage-1 transformer and trains only them (every weight with
    ``args.train_base_weights``)."""

    args_class = SftArgs
    pipeline_class = InteractivePipeline
    scheduler_class = InteractiveScheduler

    def check_settings(self) -> None:
        """The game's vocabulary first, so that the index is checked against it: the input model's (a stage-2+
        model), the settings' and the footage's (DATA_ROOT/vocabulary.json), all that are given agreeing. Then the
        shared checks, then the validation controls (default: every token in turn)."""
        args = self.args
        class_name = transformer_class_name(self.model_dir)
        if class_name not in (BASE_CLASS, INTERACTIVE_CLASS):
            raise ConfigError(
                f"args.pretrained_model_name_or_path = {args.pretrained_model_name_or_path!r} holds a {class_name}; "
                f"stage 2 trains from a CogVideoX transformer ({BASE_CLASS}): pass the output_dir of "
                "stage1/fuse_lora_weights.py"
            )
        self.vocabulary = agreed_vocabulary(
            model_vocabulary(self.model_dir), args.vocabulary(), data_root_vocabulary(args.data_root)
        )
        if self.vocabulary is None:
            raise ConfigError(
                f"no control vocabulary for the footage: write {Path(args.data_root) / VOCABULARY_FILE} (format: "
                "data/README.md), or set args.control_tokens and args.control_phrases"
            )
        args.control_tokens, args.control_phrases = self.vocabulary.tokens, self.vocabulary.phrases
        super().check_settings()
        args.validation_controls = args.validation_controls or tuple(default_control_pattern(self.vocabulary))
        try:
            self.vocabulary.encode(args.validation_controls)
        except ControlError as error:
            raise ConfigError(f"args.validation_controls: {error}") from None

    def load_interactive_transformer(self) -> InteractiveCogVideoXTransformer3DModel:
        """The stage-1 transformer with a new Interactive Module for ``self.vocabulary``, or a stage-2+ one to train on."""
        path = self.model_dir
        if transformer_class_name(path) == INTERACTIVE_CLASS:
            return InteractiveCogVideoXTransformer3DModel.from_pretrained(path, subfolder="transformer")
        vocabulary = self.vocabulary
        if self.args.clip_text_model_path:
            table = compute_clip_control_embeddings(vocabulary, self.args.clip_text_model_path, self.accelerator.device)
        else:
            table = compute_control_embeddings(vocabulary, self.tokenizer, self.text_encoder)
        base = CogVideoXTransformer3DModel.from_pretrained(path, subfolder="transformer")
        try:
            return InteractiveCogVideoXTransformer3DModel.from_base(
                base,
                vocabulary,
                table,
                control_start_layer=self.args.control_start_layer,
                control_feed_forward_mult=self.args.control_feed_forward_mult,
            )
        except ValueError as error:  # an architecture the Interactive Module does not support
            raise ConfigError(f"args.pretrained_model_name_or_path = {str(path)!r}: {error}") from None

    def build_transformer(self) -> torch.nn.Module:
        transformer = self.load_interactive_transformer()
        transformer.requires_grad_(self.args.train_base_weights)
        for param in transformer.trainable_control_parameters():
            param.requires_grad_(True)
        return transformer

    def model_kwargs(self, batch: dict[str, Any], generators: list[torch.Generator]) -> dict[str, Any]:
        """Controls, each clip's replaced by the null control with probability ``control_p_zero``."""
        controls = batch["controls"].to(self.accelerator.device)
        dropped = draw_dropout(generators, self.args.control_p_zero)
        null_id = self.vocabulary.null_id
        return {"controls": torch.where(dropped[:, None], torch.full_like(controls, null_id), controls)}

    def validation_videos(self):
        """A clip per validation prompt, steered by the validation controls (cycled over its latent frames)."""
        args = self.args
        pipeline = self.make_pipeline()
        compression = self.vae.config.temporal_compression_ratio
        num_latent_frames = (args.validation_num_frames - 1) // compression + 1
        tokens = cycle_controls(args.validation_controls, num_latent_frames)
        for name, sampling in self.validation_requests():
            output = pipeline(
                controls=tokens,
                num_frames=args.validation_num_frames,
                height=args.height,
                width=args.width,
                control_guidance_scale=args.validation_control_guidance_scale,
                output_type="pt",
                **sampling,
            )
            yield name, pipeline_video_to_signed(output.frames[0]), video_frame_labels(output.controls[0], compression)


def main(argv=None) -> Path:
    return InteractiveTrainer.main(DEFAULT_CONFIG, argv)


if __name__ == "__main__":
    run(main)
