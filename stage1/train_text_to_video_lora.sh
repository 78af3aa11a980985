#!/usr/bin/env bash
# Stage 1: LoRA fine-tuning. Settings live in training/lora_config.py; any of them can be
# overridden here as --name value (e.g. bash train_text_to_video_lora.sh --max_train_steps 100).
set -euo pipefail
cd "$(dirname "$0")"

# Launch settings: which GPUs, one process per GPU. Without a GPU, one CPU process runs.
GPU_IDS="${GPU_IDS:-0}"
NUM_PROCESSES="${NUM_PROCESSES:-1}"

if python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  DEVICE_FLAGS=(--gpu_ids "$GPU_IDS" --num_processes "$NUM_PROCESSES")
else
  DEVICE_FLAGS=(--cpu --num_processes 1 --num_cpu_threads_per_process "$(nproc)")
fi

accelerate launch "${DEVICE_FLAGS[@]}" --num_machines 1 --mixed_precision no --dynamo_backend no \
  train_text_to_video_lora.py --config training/lora_config.py "$@"
