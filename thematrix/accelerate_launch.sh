#!/usr/bin/env bash
# Shared by the stage launchers: run a training script through `accelerate launch` on the GPUs in
# GPU_IDS (NUM_PROCESSES processes over all machines, one per GPU), or as NUM_PROCESSES CPU processes
# on a machine without a GPU. ACCELERATE_CONFIG and multi-node settings: accelerate_configs/README.md.
# Usage: accelerate_launch.sh SCRIPT [ARGS...]; exits with the training script's exit code (2: bad input).
set -euo pipefail
: "${GPU_IDS:=0}" "${NUM_PROCESSES:=1}" "${ACCELERATE_CONFIG:=}"
: "${NUM_MACHINES:=1}" "${MACHINE_RANK:=0}" "${MAIN_PROCESS_IP:=127.0.0.1}" "${MAIN_PROCESS_PORT:=29500}"
PLAIN_FLAGS=(--mixed_precision no --dynamo_backend no)  # the trainer's args.mixed_precision decides

if python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  if [[ -n $ACCELERATE_CONFIG ]]; then  # a file name in accelerate_configs/ without .yaml, or a path
    [[ -f $ACCELERATE_CONFIG ]] || ACCELERATE_CONFIG="$(dirname "$0")/accelerate_configs/$ACCELERATE_CONFIG.yaml"
    MODE_FLAGS=(--config_file "$ACCELERATE_CONFIG")
  elif (( NUM_PROCESSES > 1 )); then
    MODE_FLAGS=(--multi_gpu "${PLAIN_FLAGS[@]}")
  else
    MODE_FLAGS=("${PLAIN_FLAGS[@]}")
  fi
  DEVICE_FLAGS=(--gpu_ids "$GPU_IDS" "${MODE_FLAGS[@]}")
elif [[ -n $ACCELERATE_CONFIG ]]; then
  echo "error: ACCELERATE_CONFIG=$ACCELERATE_CONFIG needs GPUs: accelerate runs FSDP and DeepSpeed only on them." \
    "Fix: unset ACCELERATE_CONFIG on a machine without GPUs" >&2
  exit 2
elif (( NUM_PROCESSES > 1 )); then
  # `--cpu` starts several processes only through mpirun; torchrun's (--multi_gpu) become CPU ranks
  # joined over gloo when ACCELERATE_USE_CPU is set.
  export ACCELERATE_USE_CPU=true
  THREADS=$(( $(nproc) / NUM_PROCESSES ))
  DEVICE_FLAGS=(--multi_gpu "${PLAIN_FLAGS[@]}" --num_cpu_threads_per_process "$(( THREADS > 1 ? THREADS : 1 ))")
else  # every core, or OMP_NUM_THREADS where it is set
  DEVICE_FLAGS=(--cpu "${PLAIN_FLAGS[@]}" --num_cpu_threads_per_process "${OMP_NUM_THREADS:-$(nproc)}")
fi

# `accelerate launch`, but a failed run ends with the training script's own last line and exit code.
exec python -m thematrix.launch "${DEVICE_FLAGS[@]}" --num_processes "$NUM_PROCESSES" --num_machines "$NUM_MACHINES" \
  --machine_rank "$MACHINE_RANK" --main_process_ip "$MAIN_PROCESS_IP" --main_process_port "$MAIN_PROCESS_PORT" "$@"
