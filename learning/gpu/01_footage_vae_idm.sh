#!/usr/bin/env bash
# Step 1 (about 4.5 minutes on one H100 and 16 cores): record the footage, pretrain the mini base model's VAE, train
# the inverse-dynamics model on the standard game's footage, time the mini model's steps on this GPU (what the
# estimates in learning/README.md project from). Needs nothing carried in.
# Returns footage/, models/pretrain-vae/model (without the random transformer's weights, which pretraining
# does not read), idm/, results/.
source "$(dirname "$0")/common.sh"
step 01

phase "footage: random-colour CarRacing for pretraining" \
  record broad "$BROAD_EPISODES" 2000 41 3 --domain_randomize
# The standard game records on the CPU while the VAE trains on the GPU. The drift reference is played as the
# streams are: random keys, each held 0.8-3.2 s (1 to 4 stream groups of 8 frames at 10 fps); it records on a
# quarter of the cores, in the VAE's time, leaving the rest to the VAE's data loader.
( record game "$GAME_EPISODES" 0 41 3 && record heldout "$HELDOUT_EPISODES" 1000 "$HELDOUT_FRAMES" 1 \
  && RECORDERS=$(((RECORDERS + 3) / 4)) record drift "$DRIFT_EPISODES" 3000 "$DRIFT_FRAMES" 1 --driver random \
    --hold_seconds 0.8 3.2 ) &
RECORDING=$!
random_base
# shellcheck disable=SC2086
phase "VAE pretraining" done_or "$MODELS/pretrain-vae/model" \
  "$PYTHON" -m thematrix.pretrain.vae --config thematrix/pretrain/vae_config_mini.py \
  --pretrained_model_name_or_path "$RANDOM_BASE" --data_root "$FOOTAGE/broad" \
  --index_file "$FOOTAGE/broad/index.json" --output_dir "$MODELS/pretrain-vae" "${VAE_SCALE[@]}" ${PRETRAIN_VAE_ARGS:-}
phase "footage: standard CarRacing for the stages and the IDM" wait "$RECORDING"
# shellcheck disable=SC2086
phase "inverse-dynamics model" done_or "$IDM/reference.safetensors" \
  "${EVALUATE[@]}" idm --model_dir "$MODELS/pretrain-vae/model" --data_root "$FOOTAGE/game" \
  --index_file "$FOOTAGE/game/index.json" --heldout_data_root "$FOOTAGE/heldout" \
  --heldout_index_file "$FOOTAGE/heldout/index.json" --fps 10 --max_frames "$HELDOUT_FRAMES" \
  --drift_data_root "$FOOTAGE/drift" --drift_index_file "$FOOTAGE/drift/index.json" \
  --drift_max_frames "$DRIFT_FRAMES" --bin_frames "$BIN_FRAMES" --output_dir "$IDM" "${IDM_SCALE[@]}" ${IDM_ARGS:-}
# Last, so that the VAE, which step 2 waits for in a chain, starts at once.
phase "benchmark: the mini model's steps on this machine" \
  "$PYTHON" learning/benchmark_steps.py --json "$RESULTS/benchmark.json" "${BENCHMARK_SCALE[@]}"

pack --exclude='*.log' --exclude='models/pretrain-vae/model/transformer/*.safetensors' \
  footage models/pretrain-vae idm results
summary
