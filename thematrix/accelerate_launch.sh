#!/usr/bin/env bash
# Shared by the stage launchers: run a training script through `accelerate launch` on the GPUs in
# GPU_IDS (NUM_PROCESSES processes, one per GPU), or as one CPU process on a machine without a GPU.
# Usage: accelerate_launch.sh SCRIPT [ARGS...]
set -euo pipefail
: "${GPU_IDS:=0}" "${NUM_PROCESSES:=1}"

if python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  DEVICE_FLAGS=(--gpu_ids "$GPU_IDS" --num_processes "$NUM_PROCESSES")
else
  DEVICE_FLAGS=(--cpu --num_processes 1 --num_cpu_threads_per_process "$(nproc)")
fi

exec accelerate launch "${DEVICE_FLAGS[@]}" --num_machines 1 --mixed_precision no --dynamo_backend no "$@"
