"""Where on the screen an IDM reads the keys: its held-out accuracy with a region held still.

    python learning/idm_regions.py --idm outputs/learning/idm --model_dir outputs/learning/models/stage1-fused \\
        --data_root outputs/learning/footage/heldout --index_file outputs/learning/footage/heldout/index.json \\
        --box 84 96 0 144

In each clip the box (TOP BOTTOM LEFT RIGHT, pixels), or everything outside it, is replaced in every frame by the
clip's first frame there: what moves only there can no longer be read. CarRacing's HUD (rows 84-95 of 96x144
frames) draws the steering and the wheels' spin; an IDM that reads the keys there measures whether a model draws
the HUD, one that reads them from the scene whether the car moves as commanded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX
from results_page import KEY_PARTS

from thematrix.evaluation.evaluate import Reference
from thematrix.evaluation.footage import RealClips, load_real_clips
from thematrix.evaluation.idm import predict


def held_still(clips: RealClips, rows: slice, columns: slice, inside: bool) -> torch.Tensor:
    """The clips' frames with the box (``inside``) or all but the box showing each clip's first frame."""
    frames = clips.frames.clone()
    mask = torch.zeros(frames.shape[-2:], dtype=torch.bool)
    mask[rows, columns] = True
    if not inside:
        mask = ~mask
    for start, length in zip(clips.starts, clips.lengths):
        clip = frames[start : start + length]
        clip[..., mask] = clip[:1][..., mask]
    return frames


def add_clip_arguments(parser: argparse.ArgumentParser) -> None:
    """The IDM, the VAE and the held-out footage that ``reconstructed_clips`` reads."""
    parser.add_argument("--idm", required=True, help="output_dir of `python -m thematrix.evaluation idm`")
    parser.add_argument("--model_dir", required=True, help="a model directory whose VAE the IDM learnt from")
    parser.add_argument("--data_root", required=True, help="held-out real footage")
    parser.add_argument("--index_file", required=True)
    parser.add_argument("--max_frames", type=int, default=105)


def reconstructed_clips(
    reference: Reference, model_dir: str, data_root: str, index_file: str, max_frames: int, device: torch.device
) -> RealClips:
    """Real clips as the IDM reads them: at its frame rate and size, through the VAE of ``model_dir``."""
    config = reference.idm.config
    vae = AutoencoderKLCogVideoX.from_pretrained(model_dir, subfolder="vae").to(device).eval()
    with torch.no_grad():
        return load_real_clips(
            data_root,
            index_file,
            reference.vocabulary,
            fps=config.fps,
            height=config.height,
            width=config.width,
            temporal_compression=config.frames_per_latent,
            max_frames=max_frames,
            vae=vae,
        )


def accuracies(predicted: torch.Tensor, labels: torch.Tensor, tokens: tuple[str, ...]) -> dict[str, float]:
    """Agreement of the whole key and of each of its parts."""
    measures = {"whole key": (predicted == labels).float().mean().item()}
    for name, part in KEY_PARTS.items():
        parts = {token: part(token) for token in tokens}
        same = [parts[tokens[a]] == parts[tokens[b]] for a, b in zip(predicted.tolist(), labels.tolist())]
        measures[name] = sum(same) / len(same)
    return measures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_clip_arguments(parser)
    parser.add_argument("--box", type=int, nargs=4, required=True, metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"))
    parser.add_argument("--output", type=Path, default=None, help="JSON file of the measures")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reference = Reference.load(args.idm, device)
    idm = reference.idm
    clips = reconstructed_clips(reference, args.model_dir, args.data_root, args.index_file, args.max_frames, device)
    ends = clips.window_ends(idm.config.frames_per_latent)
    top, bottom, left, right = args.box
    box = (slice(top, bottom), slice(left, right))
    variants = {
        "every frame as recorded": clips.frames,
        "the box held still": held_still(clips, *box, inside=True),
        "all but the box held still": held_still(clips, *box, inside=False),
    }
    measures = {
        name: accuracies(predict(idm, frames, ends)[0], clips.labels[ends], idm.tokens)
        for name, frames in variants.items()
    }
    print("| frames | " + " | ".join(next(iter(measures.values()))) + " |")
    print("| --- |" + " --- |" * (len(KEY_PARTS) + 1))
    for name, values in measures.items():
        print(f"| {name} | " + " | ".join(f"{value:.3f}" for value in values.values()) + " |")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"box": args.box, "idm": args.idm, "measures": measures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
