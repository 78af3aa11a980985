"""Play a stage 4 (SCM) model live: a local web page streams the world and takes the player's keys.

    python play.py --model_dir ../outputs/stage4/model --data_root ../footage --index_file ../footage/index.json

then open the address it prints (http://127.0.0.1:8000/). Everything is stage 3's play.py; only the sampling
defaults differ, as in inference.py: --num_inference_steps defaults to --num_groups and --guidance_scale to the
model's recorded guidance, else 1.
"""

from __future__ import annotations

from stage3 import play as swin_play
from stage4.cogvideox.pipeline_cogvideox import ScmPipeline
from stage4.inference import FEW_STEP_DEFAULTS
from thematrix.cli import run


def main(argv=None) -> None:
    swin_play.main(argv, ScmPipeline, __doc__, FEW_STEP_DEFAULTS, "stage4.inference")


if __name__ == "__main__":
    run(main)
