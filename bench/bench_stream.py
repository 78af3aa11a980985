"""Streaming speed at full CogVideoX-2B size (random weights): Swin-DPM (stage 3) and few-step (stage 4).

    python bench/bench_stream.py --height 480 --width 720 --groups 4 --json stream.json

For each setting, a stream starts from a clip one training clip long (73 frames), emits ``--groups``
groups of W=4 latent frames (16 video frames each, decoded incrementally by the causal VAE), and
reports time to first frame and frames per second after the first group. Baseline in the same process: stock
``CogVideoXPipeline`` generating 49 frames with the same number of steps and guidance, its frames
per second being frames over wall time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

from stage3.cogvideox.pipeline_cogvideox import SwinDPMPipeline, window_clip_frames
from stage4.cogvideox.pipeline_cogvideox import ScmPipeline
from stage4.cogvideox.scheduler import ScmScheduler
from thematrix.base_model import build_base_model
from thematrix.controls import ControlVocabulary, default_control_pattern
from thematrix.model_dir import load_components
from thematrix.models import InteractiveCogVideoXTransformer3DModel

STOCK_FRAMES = 49
NUM_GROUPS = 4
GROUP_SIZE = 4
# A game of nine keys, as many as the reference's car: the number of rows of the control table.
BENCH_VOCABULARY = ControlVocabulary.from_mapping({f"KEY{key}": f"The player holds key {key}." for key in range(9)})
CONTROL_PATTERN = default_control_pattern(BENCH_VOCABULARY)
PROMPT = "A game world seen from above, the player moving through it."


def stream_speed(pipeline: SwinDPMPipeline, initial_video: torch.Tensor, steps: int, guidance: float, cli) -> dict:
    """Time to first frame and steady frames per second of one stream."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.synchronize()
    start = time.perf_counter()
    arrivals = []
    frames_per_group = []
    for chunk in pipeline.stream(
        prompt=PROMPT,
        initial_video=initial_video,
        controls=lambda group: [
            CONTROL_PATTERN[(group * GROUP_SIZE + k) % len(CONTROL_PATTERN)] for k in range(GROUP_SIZE)
        ],
        num_groups=NUM_GROUPS,
        group_size=GROUP_SIZE,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator,
        max_groups=cli.groups,
    ):
        torch.cuda.synchronize()
        arrivals.append(time.perf_counter() - start)
        frames_per_group.append(chunk.frames.shape[0])
    steady_frames = sum(frames_per_group[1:])
    steady_time = arrivals[-1] - arrivals[0]
    return {
        "steps": steps,
        "guidance_scale": guidance,
        "groups": len(arrivals),
        "time_to_first_frame_s": arrivals[0],
        "fps": steady_frames / steady_time,
        "seconds_per_group": steady_time / (len(arrivals) - 1),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def stock_speed(model_dir: Path, steps: int, guidance: float, cli) -> dict:
    pipeline = CogVideoXPipeline.from_pretrained(str(model_dir), dtype=torch.bfloat16).to("cuda")
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.synchronize()
    start = time.perf_counter()
    pipeline(
        prompt=PROMPT,
        num_frames=STOCK_FRAMES,
        height=cli.height,
        width=cli.width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator,
        output_type="pt",
    )
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    del pipeline
    torch.cuda.empty_cache()
    return {
        "steps": steps,
        "guidance_scale": guidance,
        "frames": STOCK_FRAMES,
        "seconds": elapsed,
        "fps": STOCK_FRAMES / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument(
        "--groups", type=int, default=4, help="groups per stream (the first includes encoding the clip)"
    )
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--json", default=None)
    cli = parser.parse_args()
    work = Path(cli.work_dir or tempfile.mkdtemp(prefix="bench-"))
    model_dir = work / "base-2b"
    if not (model_dir / "model_index.json").is_file():
        build_base_model("cogvideox-2b", model_dir, seed=0, dtype=torch.bfloat16, device="cuda")

    components = load_components(model_dir, torch.bfloat16, SwinDPMPipeline.scheduler_class)
    base = CogVideoXTransformer3DModel.from_pretrained(model_dir, subfolder="transformer", dtype=torch.bfloat16)
    table = torch.randn(len(BENCH_VOCABULARY) + 1, base.config.text_embed_dim)
    transformer = InteractiveCogVideoXTransformer3DModel.from_base(base, BENCH_VOCABULARY, table).to(torch.bfloat16)
    del base
    swin = SwinDPMPipeline(transformer=transformer, **components).to("cuda")
    # Stage 4's pipeline on the same weights: speed does not depend on what the weights learned.
    scm = ScmPipeline(**dict(swin.components, scheduler=ScmScheduler.from_config(swin.scheduler.config)))
    initial_video = torch.rand(window_clip_frames(swin.vae, NUM_GROUPS, GROUP_SIZE), 3, cli.height, cli.width) * 2 - 1

    results = {
        "device": torch.cuda.get_device_name(),
        "size": f"{cli.height}x{cli.width}",
        "groups_per_stream": cli.groups,
    }
    for name, pipeline, steps, guidance in (
        ("swin_dpm_20_steps", swin, 20, 1.0),
        ("swin_dpm_20_steps_cfg", swin, 20, 6.0),
        # 4 steps over 4 groups: one forward per emitted group, the stage 4 (SCM) sampling path.
        ("scm_4_steps", scm, 4, 1.0),
        ("scm_4_steps_cfg", scm, 4, 6.0),
    ):
        pipeline.set_progress_bar_config(disable=True)
        torch.cuda.reset_peak_memory_stats()
        results[name] = stream_speed(pipeline, initial_video, steps, guidance, cli)
        print(name, json.dumps(results[name]))
    del swin, scm, pipeline, transformer
    torch.cuda.empty_cache()
    for name, steps, guidance in (("stock_20_steps", 20, 1.0), ("stock_20_steps_cfg", 20, 6.0)):
        results[name] = stock_speed(model_dir, steps, guidance, cli)
        print(name, json.dumps(results[name]))
    print(json.dumps(results, indent=2))
    if cli.json:
        Path(cli.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
