#!/usr/bin/env bash
# Stage 4: SCM distillation of the stage-3 model. Settings live in training/scm_config.py; any of them can be
# overridden here as --name value (e.g. bash train_text_to_video_scm.sh --max_train_steps 100).
set -euo pipefail
cd "$(dirname "$0")"

export GPU_IDS="${GPU_IDS:-0}"              # GPUs to train on, e.g. 0,1,2,3
export NUM_PROCESSES="${NUM_PROCESSES:-1}"  # one process per GPU

exec bash ../thematrix/accelerate_launch.sh train_text_to_video_scm.py --config training/scm_config.py "$@"
