"""Stream a video of any length with a stage 4 (SCM) model, one step per group, written to an mp4 as it is made.

    python inference.py --model_dir ../outputs/stage4/model --data_root ../footage \\
        --index_file ../footage/index.json --seconds 60 --random_controls --output stream.mp4

Every option is stage 3's (the window, frame rate and vocabulary come from the model directory);
--num_inference_steps is --num_groups (one forward per emitted group, the only step count a student is trained
for: another is refused) and --guidance_scale defaults to the model's recorded guidance, else 1 (the student needs
no CFG pass). It prints the time to the first frame and the frames per second.
"""

from __future__ import annotations

from pathlib import Path

from stage3 import inference as swin_inference
from stage4.cogvideox.pipeline_cogvideox import STUDENT_GUIDANCE_SCALE, ScmPipeline
from thematrix.cli import run

# One step per group (one forward per emitted group); no CFG pass (the student distilled the guidance in).
FEW_STEP_DEFAULTS = {"num_inference_steps": None, "guidance_scale": STUDENT_GUIDANCE_SCALE}


def main(argv=None) -> Path:
    return swin_inference.main(argv, ScmPipeline, __doc__, FEW_STEP_DEFAULTS)


if __name__ == "__main__":
    run(main)
