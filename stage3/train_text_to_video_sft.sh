#!/usr/bin/env bash
# Stage 3: Swin-DPM, full-parameter fine-tuning. Settings live in training/sft_config.py; any of them can be
# overridden here as --name value (e.g. bash train_text_to_video_sft.sh --max_train_steps 100).
set -euo pipefail
cd "$(dirname "$0")"

export GPU_IDS="${GPU_IDS:-0}"              # GPUs to train on, e.g. 0,1,2,3
export NUM_PROCESSES="${NUM_PROCESSES:-1}"  # one process per GPU

exec bash ../thematrix/accelerate_launch.sh train_text_to_video_sft.py --config training/sft_config.py "$@"
