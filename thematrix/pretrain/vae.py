"""Pretrain the causal video VAE of a base model directory: reconstruction + KL, then the latents' scale.

    python -m thematrix.pretrain.vae --config thematrix/pretrain/vae_config_mini.py

Each sample is a crop of ``clip_frames`` consecutive frames (4k+1) at a random start: the CogVideoX encoder
and decoder are causal and convolutional, so short crops teach what long clips need at a fraction of the
cost. The loss is the L1 reconstruction error plus ``kl_weight`` times the KL divergence of the latent
distribution to N(0, I), both per element. There is no perceptual or adversarial term, since nothing may
be downloaded. After training, the VAE's ``scaling_factor`` becomes 1 / std of latents drawn from
``scaling_clips`` crops, so the diffusion model sees unit-variance latents, as CogVideoX's scaling factor
gives its own.

Output: ``<output_dir>/model``, a copy of the input directory with the trained VAE (written aside, then
renamed), ``<output_dir>/metrics.jsonl`` and ``metrics.png`` (loss, reconstruction L1, KL, learning rate and step
time per step, as the stages' trainers write them) and, with ``report_to = "tensorboard"``, ``<output_dir>/logs``.
A run takes minutes: it writes no checkpoints, and a killed run starts again from the beginning.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX
from diffusers.optimization import get_scheduler

from thematrix.cli import run
from thematrix.config import ConfigError, parse_command_line
from thematrix.data.dataset import VideoDataset, collate_batch
from thematrix.data.index import load_index
from thematrix.model_dir import check_model_dir
from thematrix.pretrain.arguments import SAVE_DTYPES, VaeArgs
from thematrix.training.metrics import METRICS_FILE, PLOT_FILE, append_record, plot_metrics, read_records

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).parent / "vae_config_mini.py"
FINAL_MODEL = "model"  # as the stages' trainers: <output_dir>/model
LOG_DIR = "logs"
VAE_FOLDER = "vae"


def kl_per_element(posterior) -> torch.Tensor:
    """KL(N(mean, var) || N(0, 1)) averaged over every latent element (diffusers' ``kl()`` sums some axes)."""
    mean, var, logvar = posterior.mean.float(), posterior.var.float(), posterior.logvar.float()  # bf16 under autocast
    return 0.5 * (mean.pow(2) + var - 1.0 - logvar).mean()


class VaePretrainer:
    """Trains a model directory's ``AutoencoderKLCogVideoX`` on clips; see the module docstring."""

    def __init__(self, args: VaeArgs):
        args.check()
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.history: list[dict[str, float]] = []  # per step: loss, reconstruction L1, KL, lr, step time
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        precision = args.mixed_precision
        bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        if self.device.type == "cuda":  # every step has the same crop shape: cuDNN times its convolutions once
            torch.backends.cudnn.benchmark = True

    @property
    def final_model_dir(self) -> Path:
        return self.output_dir / FINAL_MODEL

    def build_dataset(self, vae: AutoencoderKLCogVideoX) -> VideoDataset:
        args = self.args
        temporal = vae.config.temporal_compression_ratio
        if (args.clip_frames - 1) % temporal:
            raise ConfigError(
                f"args.clip_frames = {args.clip_frames}: crops must have {temporal}k+1 frames for this VAE"
            )
        samples, problems = load_index(args.index_file, args.data_root)
        for problem in problems:
            logger.warning("skipping sample: %s", problem)
        if not samples:
            raise ConfigError(f"{args.index_file}: no usable sample ({len(problems)} problems listed above)")
        return VideoDataset(
            samples,
            fps=args.fps,
            height=args.height or vae.config.sample_height,
            width=args.width or vae.config.sample_width,
            frame_buckets=(args.clip_frames,),
            temporal_compression=temporal,
            random_start=True,
        )

    def batches(self, dataset: VideoDataset):
        """Endless shuffled batches of videos ``[B, 3, F, H, W]`` on the device, reproducible from ``args.seed``."""
        args = self.args
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.train_batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=collate_batch,
            num_workers=args.dataloader_num_workers,
            generator=torch.Generator().manual_seed(args.seed),
            persistent_workers=args.dataloader_num_workers > 0,
        )
        if len(loader) == 0:
            raise ConfigError(
                f"{args.index_file}: {len(dataset)} clips, fewer than args.train_batch_size = {args.train_batch_size}"
            )
        while True:
            for batch in loader:
                yield batch["video"].to(self.device, non_blocking=True).permute(0, 2, 1, 3, 4)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def train(self) -> Path:
        args = self.args
        check_model_dir(args.pretrained_model_name_or_path)
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
        torch.manual_seed(args.seed)
        vae = AutoencoderKLCogVideoX.from_pretrained(
            args.pretrained_model_name_or_path, subfolder=VAE_FOLDER, dtype=torch.float32
        )
        vae.to(self.device).train()
        dataset = self.build_dataset(vae)
        batches = self.batches(dataset)
        optimizer = torch.optim.AdamW(
            vae.parameters(),
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            weight_decay=args.adam_weight_decay,
        )
        lr_scheduler = get_scheduler("constant_with_warmup", optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = self.output_dir / METRICS_FILE
        metrics_path.write_text("")  # a run starts from the beginning (see the module docstring)
        writer = None
        if args.report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.output_dir / LOG_DIR))
        logger.info(
            "%d clips, crops of %d frames, %s VAE parameters",
            len(dataset),
            args.clip_frames,
            f"{sum(param.numel() for param in vae.parameters()):,}",
        )
        for step in range(1, args.max_train_steps + 1):
            start = time.perf_counter()
            video = next(batches)
            with self.autocast():
                posterior = vae.encode(video).latent_dist
                reconstruction = vae.decode(posterior.sample()).sample
            reconstruction_l1 = (reconstruction.float() - video).abs().mean()
            kl = kl_per_element(posterior)
            loss = reconstruction_l1 + args.kl_weight * kl
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(vae.parameters(), args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            logs = {
                "loss": loss.item(),
                "reconstruction_l1": reconstruction_l1.item(),
                "kl": kl.item(),
                "grad_norm": float(grad_norm),
                "lr": lr_scheduler.get_last_lr()[0],
                "step_time_s": time.perf_counter() - start,
            }
            self.history.append(logs)
            append_record(metrics_path, step, logs)
            if writer is not None:
                for name, value in logs.items():
                    writer.add_scalar(name, value, step)
            if step % max(1, args.max_train_steps // 20) == 0 or step == args.max_train_steps:
                logger.info(
                    "step %d/%d: loss %.4f (L1 %.4f, KL %.1f)",
                    step,
                    args.max_train_steps,
                    logs["loss"],
                    logs["reconstruction_l1"],
                    logs["kl"],
                )
        vae.eval()
        scaling_factor = 1.0 / self.latent_std(vae, batches)
        vae.register_to_config(scaling_factor=scaling_factor)
        if writer is not None:
            writer.add_scalar("scaling_factor", scaling_factor, args.max_train_steps)
            writer.close()
        logger.info("latent scaling factor %.4f", scaling_factor)
        plot_metrics(read_records(metrics_path), self.output_dir / PLOT_FILE)
        return self.save(vae)

    @torch.no_grad()
    def latent_std(self, vae: AutoencoderKLCogVideoX, batches) -> float:
        """Std of latents drawn from the VAE's distribution over ``scaling_clips`` crops (as training draws them)."""
        count, total, total_squares = 0, 0.0, 0.0
        clips = 0
        while clips < self.args.scaling_clips:
            with self.autocast():
                latents = vae.encode(next(batches)).latent_dist.sample().double()
            count += latents.numel()
            total += latents.sum().item()
            total_squares += latents.pow(2).sum().item()
            clips += latents.shape[0]
        mean = total / count
        return (total_squares / count - mean**2) ** 0.5

    def save(self, vae: AutoencoderKLCogVideoX) -> Path:
        """The input directory with this VAE, written beside the output and renamed into place."""
        final = self.final_model_dir
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(self.args.pretrained_model_name_or_path, partial, ignore=shutil.ignore_patterns(VAE_FOLDER))
        for param in vae.parameters():  # per tensor, as the trainer casts: Module.to(dtype) warns on diffusers models
            param.data = param.data.to(SAVE_DTYPES[self.args.save_dtype])
        vae.save_pretrained(partial / VAE_FOLDER, safe_serialization=True)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        return final


def main(argv: list[str] | None = None) -> Path:
    args = parse_command_line(DEFAULT_CONFIG, VaeArgs, argv)
    output = VaePretrainer(args).train()
    print(f"model with the trained VAE: {output.resolve()}")
    return output


if __name__ == "__main__":
    run(main)
