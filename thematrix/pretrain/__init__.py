"""Pretraining a base model from scratch: the stand-in for downloading CogVideoX-2B, not a fifth stage.

The recipe starts from a pretrained text-to-video model. Its real weights cannot be had here, so the
learning proof (learning/README.md) pretrains a small model of the same architecture family on footage
from a broader distribution than stage 1's, then runs the four stages on it unchanged:

1. ``python -m thematrix.base_model --preset mini`` writes the randomly initialised directory;
2. ``python -m thematrix.pretrain.vae`` trains its causal video VAE (reconstruction + KL; no downloaded
   perceptual network) and measures the latents' scaling factor (``vae``);
3. ``python -m thematrix.pretrain.transformer`` trains its transformer, every weight, on text-to-video with
   CogVideoX's v-prediction loss, through the project's ``Trainer`` (``transformer``).

The T5 text encoder keeps its random weights. CogVideoX's T5 is frozen in every stage: what the transformer
needs from it is a fixed, deterministic embedding that tells captions (and control phrases) apart, and a
random encoder gives exactly that (the mini model's control phrases embed to vectors with cosine
similarities from -0.02 to 0.89, none equal). Training it would cost a loop that nothing downstream measures.
"""
