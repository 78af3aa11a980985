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
from thematrix.controls import ControlVocabulary, cycle_controls, video_frame_labels
from thematrix.model_dir import transformer_class_name
from thematrix.models import (
    InteractiveCogVideoXTransformer3DModel,
    compute_clip_control_embeddings,
    compute_control_embeddings,
)
from thematrix.training.trainer import Trainer, draw_dropout

DEFAULT_CONFIG = Path(__file__).parent / "training" / "sft_config.py"
BASE_CLASS = CogVideoXTransformer3DModel.__name__
INTERACTIVE_CLASS = InteractiveCogVideoXTransformer3DModel.__name__


class InteractiveTrainer(Trainer):
    """Adds control blocks to the fused stage-1 transformer and trains only them."""

    args_class = SftArgs
    pipeline_class = InteractivePipeline
    scheduler_class = InteractiveScheduler

    def control_vocabulary(self) -> ControlVocabulary:
        return self.args.vocabulary()

    def load_interactive_transformer(self) -> InteractiveCogVideoXTransformer3DModel:
        """The stage-1 transformer with a new Interactive Module, or a stage-2 one to continue training."""
        path = self.args.pretrained_model_name_or_path
        class_name = transformer_class_name(path)
        if class_name == INTERACTIVE_CLASS:
            transformer = InteractiveCogVideoXTransformer3DModel.from_pretrained(path, subfolder="transformer")
            if transformer.control_vocabulary.tokens != tuple(self.args.control_tokens):
                raise ConfigError(
                    f"{path} was trained with controls {list(transformer.control_vocabulary.tokens)}, "
                    f"but args.control_tokens is {list(self.args.control_tokens)}; make them equal"
                )
            return transformer
        if class_name != BASE_CLASS:
            raise ConfigError(
                f"args.pretrained_model_name_or_path = {path!r} holds a {class_name}; stage 2 trains from a "
                f"CogVideoX transformer ({BASE_CLASS}): pass the output_dir of stage1/fuse_lora_weights.py"
            )
        vocabulary = self.control_vocabulary()
        if self.args.clip_text_model_path:
            table = compute_clip_control_embeddings(vocabulary, self.args.clip_text_model_path, self.accelerator.device)
        else:
            table = compute_control_embeddings(vocabulary, self.tokenizer, self.text_encoder)
        base = CogVideoXTransformer3DModel.from_pretrained(path, subfolder="transformer")
        try:
            return InteractiveCogVideoXTransformer3DModel.from_base(
                base, vocabulary, table, control_start_layer=self.args.control_start_layer
            )
        except ValueError as error:  # an architecture the Interactive Module does not support
            raise ConfigError(f"args.pretrained_model_name_or_path = {path!r}: {error}") from None

    def build_transformer(self) -> torch.nn.Module:
        transformer = self.load_interactive_transformer()
        transformer.requires_grad_(False)
        for param in transformer.trainable_control_parameters():
            param.requires_grad_(True)
        return transformer

    def model_kwargs(self, batch: dict[str, Any], generators: list[torch.Generator]) -> dict[str, Any]:
        """Controls, each clip's replaced by the null control with probability ``control_p_zero``."""
        controls = batch["controls"].to(self.accelerator.device)
        dropped = draw_dropout(generators, self.args.control_p_zero)
        null_id = self.control_vocabulary().null_id
        return {"controls": torch.where(dropped[:, None], torch.full_like(controls, null_id), controls)}

    def validation_requests(self):
        for name, sampling in super().validation_requests():
            yield name, dict(sampling, control_guidance_scale=self.args.validation_control_guidance_scale)

    def validation_videos(self):
        pipeline = self.make_pipeline()
        compression = self.vae.config.temporal_compression_ratio
        num_latent_frames = (self.args.validation_num_frames - 1) // compression + 1
        tokens = cycle_controls(self.args.validation_controls, num_latent_frames)
        for name, sampling in self.validation_requests():
            video, tokens = pipeline(
                controls=tokens, num_frames=self.args.validation_num_frames, height=self.args.height,
                width=self.args.width, **sampling,
            )
            yield name, video, video_frame_labels(tokens, compression)


def main(argv=None) -> Path:
    return InteractiveTrainer.main(DEFAULT_CONFIG, argv)


if __name__ == "__main__":
    run(main)
