"""Training steps and forwards at full CogVideoX-2B size (random weights), ours vs stock diffusers, one run.

    python bench/bench_train_step.py --frames 65 --height 480 --width 720 --steps 5 --json result.json

Ours: the project's stage 1 trainer (LoRA r=256), stage 2 trainer (Interactive Module only) and stage 3
trainer (every weight, grouped noise) and stage 4 trainer (SCM: frozen teacher with guidance, student, EMA target), bf16,
gradient checkpointing, cached latents, on one synthetic clip; checkpoint and model writing are
left out of the timing (they are I/O, not the step). Baseline, in the same process: a plain
diffusers + peft LoRA step written as in diffusers' CogVideoX LoRA example (same model, rank, loss
and optimizer), the same plain step training every weight (next to stage 3), and the stock
transformer's forward next to the interactive transformer's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import decord
import numpy as np
import torch
from diffusers import CogVideoXDPMScheduler, CogVideoXTransformer3DModel
from peft import LoraConfig

from stage1.train_text_to_video_lora import LoraTrainer
from stage1.training.arguments import LoraArgs
from stage2.train_text_to_video_sft import InteractiveTrainer
from stage2.training.arguments import SftArgs
from stage3.cogvideox.pipeline_cogvideox import RECIPE_GROUP_SIZE, RECIPE_NUM_GROUPS, window_clip_frames
from stage3.train_text_to_video_sft import SwinTrainer
from stage3.training.arguments import SwinArgs
from stage4.train_text_to_video_scm import ScmTrainer
from stage4.training.arguments import ScmArgs
from thematrix.base_model import build_base_model
from thematrix.controls import VOCABULARY_FILE, ControlVocabulary
from thematrix.model_dir import save_model_dir, vae_architecture
from thematrix.models import InteractiveCogVideoXTransformer3DModel
from thematrix.video import can_write_mp4, write_mp4

BENCH_FPS = 8
# A game of nine keys, as many as the reference's car: the number of rows of the control table.
BENCH_VOCABULARY = ControlVocabulary.from_mapping({f"KEY{key}": f"The player holds key {key}." for key in range(9)})
WARMUP_STEPS = 2
FORWARD_REPEATS = 5
GIB = 2**30


def synthetic_clip(root: Path, frames: int, height: int, width: int) -> Path:
    """One clip of moving noise blocks with one control token per frame, its index file and its vocabulary; kept
    where the work folder has it at this shape (written elsewhere, e.g. on a machine with ffmpeg, and carried in)."""
    if (root / "index.json").is_file() and clip_shape(root / "clip.mp4") == (frames, height, width):
        return root / "index.json"
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    video = np.stack([np.roll(base, shift=4 * index, axis=1) for index in range(frames)])
    write_mp4(video, root / "clip.mp4", fps=BENCH_FPS)
    index = {
        "list": [
            {
                "path": "clip.mp4",
                "caption": "Coloured blocks slide to the right.",
                "control_signal_seq": ",".join(BENCH_VOCABULARY.tokens[:1] * frames),
                "valid_frame_idx": 0,
            }
        ]
    }
    (root / "index.json").write_text(json.dumps(index))
    BENCH_VOCABULARY.save(root / VOCABULARY_FILE)
    return root / "index.json"


def clip_shape(path: Path) -> tuple[int, int, int] | None:
    """(frames, height, width) of the mp4 at ``path``, or None where there is none."""
    if not path.is_file():
        return None
    reader = decord.VideoReader(str(path))
    return len(reader), *reader[0].shape[:2]


def timed_trainer(trainer_class):
    """The stage's trainer without checkpoint or model writing, which are I/O rather than the step."""

    class Timed(trainer_class):
        def save_checkpoint(self):
            return None

        def save_final(self, transformer):
            return None

    return Timed


def run_ours(trainer_class, args, model_dir: Path, data_root: Path, index_file: Path, output_dir: Path, cli) -> dict:
    args.pretrained_model_name_or_path, args.data_root, args.index_file = (
        str(model_dir),
        str(data_root),
        str(index_file),
    )
    args.output_dir = str(output_dir)
    args.height, args.width, args.fps = cli.height, cli.width, BENCH_FPS
    if not isinstance(args, SwinArgs):  # stages 3 and 4 train on their window clip (17 latent frames after the history)
        args.frame_buckets = (cli.frames,)
    args.max_train_steps = WARMUP_STEPS + cli.steps
    args.validation_steps, args.report_to, args.dataloader_num_workers = 0, "none", 0
    args.cache_latents, args.lr_warmup_steps = True, 0
    args.compile_blocks = cli.compile_blocks  # the warm-up steps pay the compilation
    args.checkpoint_keeps_attention = cli.checkpoint_keeps_attention
    args.offload_checkpoints = cli.offload_checkpoints
    args.fp8_training = cli.fp8_training
    args.use_8bit_adam = cli.use_8bit_adam
    trainer = timed_trainer(trainer_class)(args)
    trainer.setup()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    times = [entry["step_time_s"] for entry in trainer.history[WARMUP_STEPS:]]
    result = {
        "step_s": statistics.median(times),
        "peak_gib": torch.cuda.max_memory_allocated() / GIB,
        "trainable_params_m": trainer.num_trainable_parameters / 1e6,
    }
    del trainer
    torch.cuda.empty_cache()
    return result


def recipe_interactive(
    base: CogVideoXTransformer3DModel, table: torch.Tensor
) -> InteractiveCogVideoXTransformer3DModel:
    """``base`` with a random Interactive Module for ``BENCH_VOCABULARY``, shaped as stage 2's defaults build it."""
    return InteractiveCogVideoXTransformer3DModel.from_base(
        base, BENCH_VOCABULARY, table, control_feed_forward_mult=SftArgs.control_feed_forward_mult
    )


def interactive_model_dir(model_dir: Path, work: Path) -> Path:
    """The base model with a (random) Interactive Module: the kind of directory stage 3 writes."""
    output = work / "interactive-2b"
    if (output / "model_index.json").is_file():
        return output
    base = CogVideoXTransformer3DModel.from_pretrained(model_dir, subfolder="transformer", dtype=torch.bfloat16)
    table = torch.randn(len(BENCH_VOCABULARY) + 1, base.config.text_embed_dim)
    return save_model_dir(recipe_interactive(base, table), model_dir, output)


def time_forward(transformer, cli, **extra) -> float:
    """Median seconds of a bf16 forward at the benchmark shape, timed with CUDA events."""
    config = transformer.config
    latent_frames = (cli.frames - 1) // config.temporal_compression_ratio + 1
    inputs = dict(
        hidden_states=torch.randn(
            1, latent_frames, config.in_channels, cli.height // 8, cli.width // 8, device="cuda", dtype=torch.bfloat16
        ),
        encoder_hidden_states=torch.randn(
            1, config.max_text_seq_length, config.text_embed_dim, device="cuda", dtype=torch.bfloat16
        ),
        timestep=torch.tensor([500], device="cuda"),
    )
    inputs.update(extra)
    times = []
    with torch.no_grad():
        for repeat in range(WARMUP_STEPS + FORWARD_REPEATS):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            transformer(**inputs)
            end.record()
            torch.cuda.synchronize()
            if repeat >= WARMUP_STEPS:
                times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def run_forwards(model_dir: Path, cli) -> dict:
    base = (
        CogVideoXTransformer3DModel.from_pretrained(model_dir, subfolder="transformer", dtype=torch.bfloat16)
        .cuda()
        .eval()
    )
    stock = time_forward(base, cli)
    vocabulary_size = len(BENCH_VOCABULARY)
    table = torch.randn(vocabulary_size + 1, base.config.text_embed_dim)
    interactive = recipe_interactive(base, table).to("cuda", torch.bfloat16).eval()
    del base
    latent_frames = (cli.frames - 1) // interactive.config.temporal_compression_ratio + 1
    controls = torch.randint(0, vocabulary_size, (1, latent_frames), device="cuda")
    ours = time_forward(interactive, cli, controls=controls)
    per_frame = time_forward(
        interactive, cli, controls=controls, timestep=torch.randint(0, 1000, (1, latent_frames), device="cuda")
    )
    del interactive
    torch.cuda.empty_cache()
    return {
        "stock_forward_s": stock,
        "interactive_forward_s": ours,
        "interactive_per_frame_timesteps_forward_s": per_frame,
    }


def run_stock(model_dir: Path, cli, lora: bool) -> dict:
    """diffusers' CogVideoX training step written plainly: LoRA r=256 as in its example, or every weight."""
    device, dtype = torch.device("cuda"), torch.bfloat16
    transformer = CogVideoXTransformer3DModel.from_pretrained(model_dir, subfolder="transformer", dtype=dtype).to(
        device
    )
    if lora:
        transformer.requires_grad_(False)
        transformer.add_adapter(
            LoraConfig(
                r=256, lora_alpha=256, init_lora_weights=True, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
            )
        )
    transformer.enable_gradient_checkpointing()
    params = [param for param in transformer.parameters() if param.requires_grad]
    for param in params:
        param.data = param.data.float()
    optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=1e-4)
    scheduler = CogVideoXDPMScheduler.from_pretrained(model_dir, subfolder="scheduler")
    alphas = scheduler.alphas_cumprod.to(device)
    config = transformer.config
    latent_frames = (cli.frames - 1) // 4 + 1
    latents = torch.randn(1, latent_frames, config.in_channels, cli.height // 8, cli.width // 8, device=device)
    prompt = torch.randn(1, config.max_text_seq_length, config.text_embed_dim, device=device, dtype=dtype)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(WARMUP_STEPS + cli.steps):
        start = time.perf_counter()
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (1,), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast("cuda", dtype=dtype):
            output = transformer(
                hidden_states=noisy.to(dtype), encoder_hidden_states=prompt, timestep=timesteps, return_dict=False
            )[0]
        prediction = scheduler.get_velocity(output.float(), noisy, timesteps)
        weights = (1 / (1 - alphas[timesteps])).view(-1, 1, 1, 1, 1)
        loss = (weights * (prediction - latents) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - start)
    result = {"step_s": statistics.median(times[WARMUP_STEPS:]), "peak_gib": torch.cuda.max_memory_allocated() / GIB}
    del transformer, optimizer
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=65)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--steps", type=int, default=5, help=f"timed steps after {WARMUP_STEPS} warm-up steps")
    parser.add_argument(
        "--stages",
        default="stock-lora",
        help="comma-separated: forwards, stock-lora, stock-full, 1 (LoRA), 2 (Interactive Module), 3 (Swin-DPM full), "
        "4-full, 4-lora (SCM distillation). Run each in its own process for clean peak-memory numbers.",
    )
    parser.add_argument("--work_dir", default=None)
    parser.add_argument(
        "--compile_blocks", action="store_true", help="our stages with args.compile_blocks (the stock rows stay eager)"
    )
    parser.add_argument(
        "--checkpoint_keeps_attention",
        action="store_true",
        help="our stages with args.checkpoint_keeps_attention (the stock rows recompute everything)",
    )
    parser.add_argument(
        "--offload_checkpoints",
        action="store_true",
        help="our stages with args.offload_checkpoints (the stock rows keep the block inputs on the GPU)",
    )
    parser.add_argument(
        "--fp8_training", action="store_true", help="our stages with args.fp8_training (torchao; the stock rows bf16)"
    )
    parser.add_argument(
        "--use_8bit_adam",
        action="store_true",
        help="our stages with args.use_8bit_adam (bitsandbytes' 8-bit AdamW moments; the stock rows torch's AdamW)",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    cli = parser.parse_args()
    work = Path(cli.work_dir or tempfile.mkdtemp(prefix="bench-"))
    if not (work / "clips" / "index.json").is_file() and not can_write_mp4():
        parser.error(
            "no ffmpeg to write the synthetic clip with (imageio-ffmpeg's binary or IMAGEIO_FFMPEG_EXE): install one, "
            f"or run this once with --work_dir where ffmpeg is and copy its clips/ folder to {work / 'clips'}"
        )
    model_dir = work / "base-2b"
    if not (model_dir / "model_index.json").is_file():
        start = time.perf_counter()
        build_base_model("cogvideox-2b", model_dir, seed=0, dtype=torch.bfloat16, device="cuda")
        print(f"built 2B model in {time.perf_counter() - start:.0f} s")
    data_root = work / "clips"
    data_root.mkdir(parents=True, exist_ok=True)
    # Stages 3 and 4 train on the recipe window's clip.
    window_frames = window_clip_frames(vae_architecture(model_dir), RECIPE_NUM_GROUPS, RECIPE_GROUP_SIZE)
    index_file = synthetic_clip(data_root, max(cli.frames, window_frames), cli.height, cli.width)

    stages = set(cli.stages.split(","))
    results = {
        "device": torch.cuda.get_device_name(),
        "shape": f"{cli.frames} frames {cli.height}x{cli.width}, batch 1",
        "compile_blocks": cli.compile_blocks,
        "checkpoint_keeps_attention": cli.checkpoint_keeps_attention,
        "offload_checkpoints": cli.offload_checkpoints,
        "fp8_training": cli.fp8_training,
        "use_8bit_adam": cli.use_8bit_adam,
    }
    if "forwards" in stages:
        results["forwards"] = run_forwards(model_dir, cli)
    if "stock-lora" in stages:
        results["stock_diffusers_lora"] = run_stock(model_dir, cli, lora=True)
    if "stock-full" in stages:
        results["stock_diffusers_full"] = run_stock(model_dir, cli, lora=False)
    if "1" in stages:
        results["ours_stage1_lora"] = run_ours(
            LoraTrainer, LoraArgs(), model_dir, data_root, index_file, work / "run1", cli
        )
    if "2" in stages:
        results["ours_stage2_interactive"] = run_ours(
            InteractiveTrainer, SftArgs(), model_dir, data_root, index_file, work / "run2", cli
        )
    if "3" in stages:
        results["ours_stage3_swin_full"] = run_ours(
            SwinTrainer, SwinArgs(), model_dir, data_root, index_file, work / "run3", cli
        )
    for student in ("full", "lora"):
        if f"4-{student}" in stages:
            scm = ScmArgs()
            scm.student = student  # with distill_guidance, the default
            results[f"ours_stage4_scm_{student}"] = run_ours(
                ScmTrainer,
                scm,
                interactive_model_dir(model_dir, work),
                data_root,
                index_file,
                work / f"run4{student}",
                cli,
            )
    print(json.dumps(results, indent=2))
    if cli.json:
        Path(cli.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
