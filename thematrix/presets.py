"""Architecture presets of the base model: the real CogVideoX-2B, a tiny twin for CPU tests, and a
mini one that trains from scratch in minutes on one GPU.

Every preset uses the same diffusers classes; only sizes differ, so every code path that runs on
``tiny`` on a laptop runs unchanged on ``mini`` and ``cogvideox-2b`` on a GPU.
"""

from __future__ import annotations

# CogVideoX-2B's published component configs (diffusers format).
COGVIDEOX_2B = {
    "transformer": dict(
        num_attention_heads=30,
        attention_head_dim=64,
        in_channels=16,
        out_channels=16,
        flip_sin_to_cos=True,
        freq_shift=0,
        time_embed_dim=512,
        text_embed_dim=4096,
        num_layers=30,
        dropout=0.0,
        attention_bias=True,
        sample_width=90,
        sample_height=60,
        sample_frames=49,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=226,
        activation_fn="gelu-approximate",
        timestep_activation_fn="silu",
        norm_elementwise_affine=True,
        norm_eps=1e-5,
        spatial_interpolation_scale=1.875,
        temporal_interpolation_scale=1.0,
    ),
    "vae": dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(128, 256, 256, 512),
        latent_channels=16,
        layers_per_block=3,
        act_fn="silu",
        norm_eps=1e-6,
        norm_num_groups=32,
        temporal_compression_ratio=4,
        sample_height=480,
        sample_width=720,
        scaling_factor=1.15258426,
        force_upcast=True,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ),
    # T5 v1.1 XXL encoder.
    "text_encoder": dict(
        vocab_size=32128,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
    ),
    "tokenizer": dict(vocab_size=32000, model_max_length=226),
    # CogVideoX-2B's scheduler: v-prediction, zero terminal SNR, SNR shifted by 3.
    "scheduler": dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="v_prediction",
        clip_sample_range=1.0,
        sample_max_value=1.0,
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
        snr_shift_scale=3.0,
    ),
}

# Same classes, sizes small enough for a CPU test to train in seconds.
TINY = {
    "transformer": dict(
        COGVIDEOX_2B["transformer"],
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=32,
        num_layers=4,
        sample_width=8,
        sample_height=6,
        sample_frames=9,
    ),
    "vae": dict(
        COGVIDEOX_2B["vae"],
        block_out_channels=(8, 8, 16, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_height=48,
        sample_width=64,
    ),
    "text_encoder": dict(
        COGVIDEOX_2B["text_encoder"],
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        dropout_rate=0.0,
    ),
    "tokenizer": dict(vocab_size=1000, model_max_length=226),
    "scheduler": dict(COGVIDEOX_2B["scheduler"]),
}

# Same classes, sized to be pretrained from scratch (thematrix/pretrain/) and put through all four stages
# within about an hour of one GPU (learning/README.md): 96x144 frames (CarRacing's 2:3, the car's steering and
# the track's motion still visible), VAE factors of CogVideoX (8x space, 4x time, 16 channels) -> 12x18
# latents, 6x9 patches per latent frame; a 256-wide, 8-block transformer (9.7M parameters); a 2-block T5
# (its weights stay random, as CogVideoX's T5 stays frozen: thematrix/pretrain/__init__.py says why).
# The VAE's scaling_factor is measured on the footage by its pretraining, which overwrites this one.
MINI = {
    "transformer": dict(
        COGVIDEOX_2B["transformer"],
        num_attention_heads=4,
        attention_head_dim=64,
        in_channels=16,
        out_channels=16,
        time_embed_dim=128,
        text_embed_dim=128,
        num_layers=8,
        sample_width=18,
        sample_height=12,
        sample_frames=41,
    ),
    "vae": dict(
        COGVIDEOX_2B["vae"],
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=1,
        norm_num_groups=8,
        sample_height=96,
        sample_width=144,
    ),
    "text_encoder": dict(
        COGVIDEOX_2B["text_encoder"],
        d_model=128,
        d_kv=32,
        d_ff=256,
        num_layers=2,
        num_heads=4,
        dropout_rate=0.0,
    ),
    "tokenizer": dict(vocab_size=1000, model_max_length=226),
    "scheduler": dict(COGVIDEOX_2B["scheduler"]),
}

PRESETS = {"tiny": TINY, "mini": MINI, "cogvideox-2b": COGVIDEOX_2B}
