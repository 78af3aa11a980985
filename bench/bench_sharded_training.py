"""Stage 3 full fine-tuning and stage 4 distillation at CogVideoX-2B size (random weights) on 1, 2 or 4 GPUs, under
data parallel, FSDP and DeepSpeed ZeRO-2, through the stage launchers; and sharded-checkpoint resume checks.

    python bench/bench_sharded_training.py --work_dir /tmp/shard --rows prepare
    python bench/bench_sharded_training.py --work_dir /tmp/shard --rows stage3-fsdp-2 --json shard.json

A row ``STAGE-MODE-GPUS`` (stage3 or stage4; ddp, fsdp or zero2; 1, 2 or 4) is one launch of the stage's launcher
(``bash stage3/train_text_to_video_sft.sh``, ``bash stage4/train_text_to_video_scm.sh``) with GPU_IDS, NUM_PROCESSES
and ACCELERATE_CONFIG set, for WARMUP_STEPS + ``--steps`` optimizer steps of one clip per GPU: the recipe window
(65 frames at 480x720 after the history frames), latents cached. Stage 4 distils a full student from a stage-3
model (the base model with a random Interactive Module), guided teacher and EMA target included. Throughput is
clips per second over the timed steps (clips per step / median step time, from the run's metrics.jsonl); peak
memory is the main process's ``torch.cuda.max_memory_allocated`` over the run (each GPU holds the same share).
The checkpoint and model a run writes after its last step are outside the timing.

A row ``resume-MODE`` trains RESUME_STEP steps of stage 3 on 2 GPUs (checkpoint and model at that step), then
resumes that checkpoint with nothing left to train on 1 GPU (ZeRO-2: on 2, as DeepSpeed does not re-split its
optimizer state): the model it writes must equal the 2-GPU run's bit for bit, and the checkpoint's LR schedule must
stand at RESUME_STEP (it counts optimizer steps, whatever the number of processes). ``resume-MODE-stage4`` does the
same for stage 4 (its checkpoint holds the EMA target too, which the resumed run checks against its student).

Every row appends its result to ``--json`` (rows of earlier commands kept), so that each row can be its own
command. ``--tiny`` runs the tiny model at a tiny size, a dry run of this script on the CPU (ddp rows only:
accelerate runs FSDP and DeepSpeed on GPUs only).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from bench.bench_train_step import BENCH_FPS, WARMUP_STEPS, interactive_model_dir, synthetic_clip
from stage3.cogvideox.pipeline_cogvideox import RECIPE_GROUP_SIZE, RECIPE_NUM_GROUPS, window_clip_frames
from thematrix.base_model import build_base_model
from thematrix.model_dir import vae_architecture
from thematrix.training.checkpoint import CHECKPOINT_PREFIX
from thematrix.training.metrics import METRICS_FILE, read_records

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = {
    "stage3": REPO_ROOT / "stage3" / "train_text_to_video_sft.sh",
    "stage4": REPO_ROOT / "stage4" / "train_text_to_video_scm.sh",
}
ACCELERATE_CONFIGS = {"ddp": "", "fsdp": "fsdp", "zero2": "deepspeed_zero2"}
GPU_COUNTS = (1, 2, 4)
RESUME_STEP = 2
RESUME_SAVED_ON = 2  # GPUs of the run whose checkpoint is resumed
# The GPUs a resume row resumes on: DeepSpeed cannot re-split ZeRO's optimizer state over another count.
RESUME_ON = {"ddp": 1, "fsdp": 1, "zero2": RESUME_SAVED_ON}
# One command of the lead's GPU machine runs at most 10 minutes: a launch gets what is left of it.
LAUNCH_TIMEOUT_S = 540
OUTPUT_TAIL_CHARS = 3000
FINAL_WEIGHTS = Path("model") / "transformer" / "diffusion_pytorch_model.safetensors"
SCHEDULER_STATE = "scheduler.bin"  # accelerate's file of the LR schedule's state in a checkpoint
GIB = 2**30
# --tiny: the tiny preset at the tests' size and window (1 + 2 x 2 latent frames after the history).
TINY_SIZE = dict(height=48, width=64, num_noise_groups=2, group_size=2)


def build_inputs(work: Path, cli) -> dict[str, Path]:
    """The base model (random weights), a stage-3 model made from it for stage 4, and one synthetic window clip."""
    base = work / ("base-tiny" if cli.tiny else "base-2b")
    if not (base / "model_index.json").is_file():
        start = time.perf_counter()
        if cli.tiny:
            build_base_model("tiny", base, seed=0)
        else:
            build_base_model("cogvideox-2b", base, seed=0, dtype=torch.bfloat16, device="cuda")
            gc.collect()
            torch.cuda.empty_cache()  # the launched runs measure their own memory
        print(f"built {base.name} in {time.perf_counter() - start:.0f} s")
    num_groups = TINY_SIZE["num_noise_groups"] if cli.tiny else RECIPE_NUM_GROUPS
    group_size = TINY_SIZE["group_size"] if cli.tiny else RECIPE_GROUP_SIZE
    clips = work / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    frames = window_clip_frames(vae_architecture(base), num_groups, group_size)
    height, width = size(cli)
    index_file = synthetic_clip(clips, frames, height, width)
    index = json.loads(index_file.read_text())
    index["list"] *= max(GPU_COUNTS)  # a batch for every GPU: the same clip, as the steps are timed, not learned
    index_file.write_text(json.dumps(index))
    return {"stage3": base, "stage4": interactive_model_dir(base, work), "data_root": clips, "index_file": index_file}


def size(cli) -> tuple[int, int]:
    return (TINY_SIZE["height"], TINY_SIZE["width"]) if cli.tiny else (cli.height, cli.width)


def launch(stage: str, mode: str, gpus: int, output_dir: Path, inputs: dict[str, Path], cli, **settings) -> dict:
    """Run the stage's launcher on ``gpus`` GPUs (CPU processes with --tiny) under ``mode``; returns its exit code,
    wall time and output tail."""
    height, width = size(cli)
    overrides = {
        "pretrained_model_name_or_path": inputs[stage],
        "data_root": inputs["data_root"],
        "index_file": inputs["index_file"],
        "output_dir": output_dir,
        "cache_dir": cli.work_dir / f"cache-{stage}",
        "height": height,
        "width": width,
        "fps": BENCH_FPS,
        "lr_warmup_steps": 0,
        "validation_steps": 0,
        "report_to": "none",
        "dataloader_num_workers": 0,
        "train_batch_size": 1,
        **({key: TINY_SIZE[key] for key in ("num_noise_groups", "group_size")} if cli.tiny else {}),
        **settings,
    }
    arguments = [item for name, value in overrides.items() for item in (f"--{name}", str(value))]
    environment = {
        **os.environ,
        "GPU_IDS": ",".join(cli.gpu_ids[:gpus]),
        "NUM_PROCESSES": str(gpus),
        "ACCELERATE_CONFIG": ACCELERATE_CONFIGS[mode],
        "MAIN_PROCESS_PORT": "0",  # a free port
        # The repository first, then whatever the caller's path holds (packages installed beside the interpreter's).
        "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH")))),
    }
    start = time.perf_counter()
    try:
        done = subprocess.run(
            ["bash", str(LAUNCHERS[stage]), *arguments],
            env=environment,
            capture_output=True,
            text=True,
            timeout=cli.launch_timeout_s,
        )
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as timeout:
        parts = (timeout.stdout or b"", timeout.stderr or b"")  # bytes, whatever text= asked
        code, output = "timeout", "".join(part.decode() if isinstance(part, bytes) else part for part in parts)
    return {"exit_code": code, "wall_s": time.perf_counter() - start, "output_tail": output[-OUTPUT_TAIL_CHARS:]}


def throughput_row(stage: str, mode: str, gpus: int, inputs: dict[str, Path], cli) -> dict:
    output_dir = cli.work_dir / f"run-{stage}-{mode}-{gpus}"
    steps = WARMUP_STEPS + cli.steps
    result = launch(stage, mode, gpus, output_dir, inputs, cli, max_train_steps=steps, checkpointing_steps=steps)
    records = read_records(output_dir / METRICS_FILE) if (output_dir / METRICS_FILE).is_file() else []
    timed = [record for record in records if "step_time_s" in record][WARMUP_STEPS:]
    if result["exit_code"] == 0 and timed:
        step_s = statistics.median(record["step_time_s"] for record in timed)
        result.update(
            step_s=step_s,
            clips_per_s=gpus / step_s,
            peak_gib_per_gpu=max(record.get("peak_memory_gib", 0.0) for record in records),
            timed_steps=len(timed),
        )
        del result["output_tail"]
    remove(output_dir)  # a 2B checkpoint is ~24 GB
    return result


def resume_row(stage: str, mode: str, inputs: dict[str, Path], cli) -> dict:
    saved, resumed = (cli.work_dir / f"resume-{stage}-{mode}-{run}" for run in ("saved", "resumed"))
    common = dict(max_train_steps=RESUME_STEP, checkpointing_steps=RESUME_STEP, lr_scheduler="cosine")
    result = {"saved_on_gpus": RESUME_SAVED_ON, "resumed_on_gpus": RESUME_ON[mode]}
    result["save"] = launch(stage, mode, RESUME_SAVED_ON, saved, inputs, cli, **common)
    checkpoint = saved / "checkpoints" / f"{CHECKPOINT_PREFIX}{RESUME_STEP}"
    if result["save"]["exit_code"] == 0:
        # The same clips per optimizer step on fewer GPUs: the settings the checkpoint allows to change.
        accumulation = RESUME_SAVED_ON // RESUME_ON[mode]
        result["resume"] = launch(
            stage,
            mode,
            RESUME_ON[mode],
            resumed,
            inputs,
            cli,
            resume_from_checkpoint=checkpoint,
            gradient_accumulation_steps=accumulation,
            **common,
        )
    if result.get("resume", {}).get("exit_code") == 0:
        expected, actual = load_file(str(saved / FINAL_WEIGHTS)), load_file(str(resumed / FINAL_WEIGHTS))
        differing = [name for name in expected if not torch.equal(expected[name], actual.get(name))]
        schedule = torch.load(checkpoint / SCHEDULER_STATE, weights_only=False)
        result.update(
            weights_equal=not differing and expected.keys() == actual.keys(),
            differing_weights=differing[:5],
            checkpoint_lr_schedule_step=schedule["last_epoch"],
            lr_schedule_at_saved_step=schedule["last_epoch"] == RESUME_STEP,
        )
        for part in ("save", "resume"):
            del result[part]["output_tail"]
    remove(saved)
    remove(resumed)
    return result


def remove(path: Path) -> None:
    subprocess.run(["rm", "-rf", str(path)], check=True)


def all_rows() -> list[str]:
    rows = [f"{stage}-{mode}-{gpus}" for stage in LAUNCHERS for mode in ACCELERATE_CONFIGS for gpus in GPU_COUNTS]
    return rows + [f"resume-{mode}{suffix}" for suffix in ("", "-stage4") for mode in ACCELERATE_CONFIGS]


def split_row(row: str) -> tuple[str, str, str | None]:
    """(stage or "resume", mode, GPU count or a resume row's stage, if named) of a row's name."""
    kind, mode, *rest = row.split("-")
    return kind, mode, rest[0] if rest else None


def gpus_needed(row: str) -> int:
    kind, _, gpus = split_row(row)
    return RESUME_SAVED_ON if kind == "resume" else int(gpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="prepare", help=f"comma-separated, of: prepare, {', '.join(all_rows())}")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--steps", type=int, default=4, help=f"timed steps after {WARMUP_STEPS} warm-up steps")
    parser.add_argument(
        "--work_dir", type=Path, required=True, help="models, clips and latent caches, kept between rows"
    )
    parser.add_argument("--json", type=Path, default=None, help="results file; rows are added to what it holds")
    parser.add_argument("--tiny", action="store_true", help="the tiny model at a tiny size: a dry run on the CPU")
    parser.add_argument("--launch_timeout_s", type=int, default=LAUNCH_TIMEOUT_S)
    parser.add_argument(
        "--gpu_ids",
        default=",".join(map(str, range(max(GPU_COUNTS)))),
        help="the GPUs rows run on, a row of N GPUs on the first N (other jobs can hold the rest meanwhile)",
    )
    cli = parser.parse_args()
    cli.gpu_ids = cli.gpu_ids.split(",")
    rows = [row for row in cli.rows.split(",") if row != "prepare"]
    unknown = set(rows) - set(all_rows())
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {all_rows()}")
    too_many = [row for row in rows if gpus_needed(row) > len(cli.gpu_ids)]
    if too_many:
        parser.error(f"rows {too_many} need more GPUs than --gpu_ids {','.join(cli.gpu_ids)} names")
    cli.work_dir = cli.work_dir.resolve()
    inputs = build_inputs(cli.work_dir, cli)
    results = json.loads(cli.json.read_text()) if cli.json and cli.json.is_file() else {}
    results.update(
        device="CPU (tiny dry run)" if cli.tiny else torch.cuda.get_device_name(),
        shape="tiny" if cli.tiny else f"stage-3 window of 65 frames at {cli.height}x{cli.width}, 1 clip per GPU",
    )
    rows_done = results.setdefault("rows", {})
    for row in rows:
        kind, mode, last = split_row(row)
        print(f"{row} ...", flush=True)
        if kind == "resume":
            rows_done[row] = resume_row(last or "stage3", mode, inputs, cli)
        else:
            rows_done[row] = throughput_row(kind, mode, int(last), inputs, cli)
        print(json.dumps({row: rows_done[row]}, indent=2), flush=True)
        if cli.json:
            cli.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
