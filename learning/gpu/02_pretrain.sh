#!/usr/bin/env bash
# Step 2 (about 3.5 minutes on one H100): pretrain the mini base model's transformer, text-to-video from scratch,
# on the random-colour footage. Carry in: outputs/learning/footage/broad, outputs/learning/models/pretrain-vae.
# Returns models/pretrain (the base model at models/pretrain/model, its loss log), results/.
source "$(dirname "$0")/common.sh"
step 02

# shellcheck disable=SC2086
phase "transformer pretraining" done_or "$MODELS/pretrain/model" \
  "$PYTHON" -m thematrix.pretrain.transformer --config thematrix/pretrain/transformer_config_mini.py \
  --pretrained_model_name_or_path "$MODELS/pretrain-vae/model" --data_root "$FOOTAGE/broad" \
  --index_file "$FOOTAGE/broad/index.json" --output_dir "$MODELS/pretrain" \
  "${TRAIN_SCALE[@]}" "${TRAIN_SPEED[@]}" ${PRETRAIN_ARGS:-}

pack models/pretrain results
summary
