"""The non-public parts of diffusers and accelerate the project relies on, each checked where a release could
change it. requirements.txt pins the ranges these were checked against; when one of these tests fails after an
upgrade, the message names the module of the project to adapt before widening the pin."""

from __future__ import annotations

import inspect

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline

from thematrix.models import InteractiveCogVideoXTransformer3DModel
from thematrix.presets import TINY


def test_the_vae_decoder_takes_and_returns_its_causal_convolution_cache():
    """thematrix/streaming_vae.py swaps the decoder's ``conv_cache`` in and out with hooks."""
    vae = AutoencoderKLCogVideoX(**TINY["vae"]).eval()
    assert "conv_cache" in inspect.signature(vae.decoder.forward).parameters, (
        "diffusers' CogVideoX decoder no longer takes conv_cache: adapt thematrix/streaming_vae.py"
    )
    latents = torch.randn(1, TINY["vae"]["latent_channels"], 3, 6, 8)
    with torch.no_grad():
        output = vae.decoder(latents, conv_cache=None)
    assert isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], dict), (
        "diffusers' CogVideoX decoder no longer returns (sample, conv_cache): adapt thematrix/streaming_vae.py"
    )
    assert vae.num_latent_frames_batch_size == 2, "the decoder's frame batch changed: check thematrix/streaming_vae.py"


def test_the_pipeline_prepares_rotary_embeddings_for_stage_1_training():
    """thematrix/training/trainer.py builds a 5B-style model's rotary embeddings as the pipeline does."""
    method = getattr(CogVideoXPipeline, "_prepare_rotary_positional_embeddings", None)
    assert method is not None, "CogVideoXPipeline lost _prepare_rotary_positional_embeddings: adapt the trainer"
    assert list(inspect.signature(method).parameters) == ["self", "height", "width", "num_frames", "device"]


def test_gradient_checkpointing_sets_the_models_checkpointing_function():
    """thematrix/models/interactive_transformer.py checkpoints its control blocks through ModelMixin's function."""
    transformer = InteractiveCogVideoXTransformer3DModel(
        **TINY["transformer"], control_tokens=["GO"], control_phrases=["Go."]
    )
    transformer.enable_gradient_checkpointing()
    assert transformer.gradient_checkpointing and callable(
        getattr(transformer, "_gradient_checkpointing_func", None)
    ), "ModelMixin no longer sets _gradient_checkpointing_func: adapt the interactive transformer's forward"


def test_accelerate_lists_the_objects_registered_for_checkpointing():
    """thematrix/training/checkpoint.py counts registered objects (stage 4's EMA) in its disk estimate."""
    accelerator = Accelerator(cpu=True)
    registered = torch.nn.Linear(1, 1)
    accelerator.register_for_checkpointing(registered)
    assert registered in getattr(accelerator, "_custom_objects", []), (
        "accelerate no longer keeps _custom_objects: adapt thematrix/training/checkpoint.py's checkpoint estimate"
    )
