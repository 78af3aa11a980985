"""FLOPs and time of the mini model's training and sampling steps on this machine, and each run's projected time.

    python learning/benchmark_steps.py            # on the GPU: measured; on the CPU: FLOPs and CPU times
    python learning/benchmark_steps.py --json out.json

Random weights of the mini preset (thematrix/presets.py), the shapes and batch sizes of the mini configs. Each
training run is projected as its configured steps times the measured time of its step; the step of a stage is
approximated by the stock transformer's (stage 2's control blocks add about a sixth to a forward; stage 1's
LoRA trains no base weight, about a third less backward), stage 4's as a student step plus its teacher's guided
forwards. Data loading, latent caching and start-up come on top (learning/README.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
from torch.utils.flop_counter import FlopCounterMode

from stage1.training.arguments import LoraArgs
from stage2.training.arguments import SftArgs
from stage3.training.arguments import SwinArgs
from stage4.training.arguments import ScmArgs
from thematrix.config import load_config
from thematrix.presets import PRESETS
from thematrix.pretrain.arguments import PretrainArgs, VaeArgs

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "VAE pretraining": ("thematrix/pretrain/vae_config_mini.py", VaeArgs),
    "transformer pretraining": ("thematrix/pretrain/transformer_config_mini.py", PretrainArgs),
    "stage 1": ("stage1/training/lora_config_mini.py", LoraArgs),
    "stage 2": ("stage2/training/sft_config_mini.py", SftArgs),
    "stage 3": ("stage3/training/sft_config_mini.py", SwinArgs),
    "stage 4": ("stage4/training/scm_config_mini.py", ScmArgs),
}
# A stage's step relative to the stock transformer's full training step at the same shape (see the docstring).
STEP_FACTORS = {"transformer pretraining": 1.0, "stage 1": 0.8, "stage 2": 1.1, "stage 3": 1.0}
CFG_BRANCHES = 3  # guided forwards batch (empty, null), (text, null), (text, controls)
FORWARD_SHARE = 1 / 3  # a forward's share of a training step (backward costs about twice a forward)


def measure(function, repeats: int, device: torch.device) -> tuple[float, float]:
    """(seconds per call after a warm-up call, FLOPs per call)."""
    with FlopCounterMode(display=False) as counter:
        function()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, flops


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="also write the table here")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="one batch size for every run instead of the configs' (a quick check of this script)",
    )
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    repeats = args.repeats if device.type == "cuda" else 1
    preset = PRESETS["mini"]
    configs = {name: load_config(ROOT / path, kind) for name, (path, kind) in CONFIGS.items()}
    for config in configs.values():
        config.train_batch_size = args.batch_size or config.train_batch_size
    transformer = CogVideoXTransformer3DModel(**preset["transformer"]).to(device)
    vae = AutoencoderKLCogVideoX(**preset["vae"]).to(device)
    optimizer = torch.optim.AdamW(list(transformer.parameters()) + list(vae.parameters()))
    c = vae.config.temporal_compression_ratio
    latent_shape = (
        transformer.config.in_channels,
        preset["vae"]["sample_height"] // 8,
        preset["vae"]["sample_width"] // 8,
    )
    text = (preset["tokenizer"]["model_max_length"], transformer.config.text_embed_dim)

    def inputs(batch: int, frames: int):
        return (
            torch.randn(batch, frames, *latent_shape, device=device),
            torch.randn(batch, *text, device=device),
            torch.randint(0, 1000, (batch,), device=device),
        )

    def train_step(batch: int, frames: int):
        hidden, encoder, timesteps = inputs(batch, frames)

        def run():
            with autocast():
                output = transformer(hidden, encoder, timesteps, return_dict=False)[0]
            output.float().pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def forward(batch: int, frames: int):
        hidden, encoder, timesteps = inputs(batch, frames)

        @torch.no_grad()
        def run():
            with autocast():
                transformer(hidden, encoder, timesteps, return_dict=False)

        return run

    rows = {}
    vae_args = configs["VAE pretraining"]
    video = torch.randn(
        vae_args.train_batch_size,
        3,
        vae_args.clip_frames,
        vae.config.sample_height,
        vae.config.sample_width,
        device=device,
    )

    def vae_step():
        with autocast():
            reconstruction = vae.decode(vae.encode(video).latent_dist.sample()).sample
        (reconstruction.float() - video).abs().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rows["VAE pretraining"] = measure(vae_step, repeats, device)
    for name in ("transformer pretraining", "stage 1", "stage 2", "stage 3"):
        config = configs[name]
        frames = (config.frame_buckets[-1] - 1) // c + 1 - (2 if name == "stage 3" else 0)  # stage 3 drops its history
        seconds, flops = measure(train_step(config.train_batch_size, frames), repeats, device)
        rows[name] = (seconds * STEP_FACTORS[name], flops * STEP_FACTORS[name])
    scm = configs["stage 4"]
    window = 1 + scm.num_noise_groups * scm.group_size
    student = measure(train_step(scm.train_batch_size, window), repeats, device)
    teacher = measure(forward(scm.train_batch_size * CFG_BRANCHES, window), repeats, device)
    rows["stage 4"] = (
        student[0] + scm.skipping_interval * teacher[0] + FORWARD_SHARE * student[0],
        student[1] + scm.skipping_interval * teacher[1] + FORWARD_SHARE * student[1],
    )

    table = {}
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{'run':<26}{'steps':>7}{'GFLOP/step':>12}{'s/step':>10}{'projected s':>13}   ({device_name})")
    for name, (seconds, flops) in rows.items():
        steps = configs[name].max_train_steps
        table[name] = {
            "steps": steps,
            "gflop_per_step": flops / 1e9,
            "seconds_per_step": seconds,
            "projected_s": steps * seconds,
        }
        print(f"{name:<26}{steps:>7}{flops / 1e9:>12.1f}{seconds:>10.3f}{steps * seconds:>13.0f}")

    # Streams: per group of W latent frames, N / G guided window forwards (or one unguided) and a decode of W latents.
    swin = configs["stage 3"]
    group_frames = c * swin.group_size
    guided, _ = measure(forward(CFG_BRANCHES, window), repeats, device)
    single, _ = measure(forward(1, window), repeats, device)
    latents = torch.randn(1, latent_shape[0], swin.group_size + 1, *latent_shape[1:], device=device)

    @torch.no_grad()
    def decode_group():
        with autocast():
            vae.decode(latents)

    decode, _ = measure(decode_group, repeats, device)
    steps_per_band = swin.validation_num_inference_steps // swin.num_noise_groups
    for name, seconds in {
        "stream, 20 steps, guided": steps_per_band * guided + decode,
        "stream, 4 steps, unguided": single + decode,
    }.items():
        table[name] = {"frames_per_second": group_frames / seconds}
        print(f"{name:<26} {group_frames / seconds:.1f} frames per second")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    return table


if __name__ == "__main__":
    main()
