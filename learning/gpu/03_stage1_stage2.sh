#!/usr/bin/env bash
# Step 3 (about 4 minutes on one H100): stage 1 (LoRA on the standard game), fuse, stage 2 (the Interactive
# Module), each with the users' launcher and its mini config; then clips of the base, stage-1 and stage-2 models.
# Carry in: outputs/learning/footage/game, outputs/learning/models/pretrain/model, outputs/learning/idm.
# Returns models/stage2 (model and log), models/stage1-lora (weights and log), results/.
source "$(dirname "$0")/common.sh"
step 03
GAME=(--data_root "$FOOTAGE/game" --index_file "$FOOTAGE/game/index.json")

# shellcheck disable=SC2086
phase "stage 1: LoRA fine-tuning" done_or "$MODELS/stage1-lora/pytorch_lora_weights.safetensors" \
  bash stage1/train_text_to_video_lora.sh --config training/lora_config_mini.py \
  --pretrained_model_name_or_path "$MODELS/pretrain/model" "${GAME[@]}" --output_dir "$MODELS/stage1-lora" \
  "${TRAIN_SCALE[@]}" ${STAGE1_ARGS:-}
phase "stage 1: fuse the LoRA" done_or "$MODELS/stage1-fused" \
  "$PYTHON" stage1/fuse_lora_weights.py --base_model "$MODELS/pretrain/model" --lora_dir "$MODELS/stage1-lora" \
  --output_dir "$MODELS/stage1-fused"
# shellcheck disable=SC2086
phase "stage 2: the Interactive Module" done_or "$MODELS/stage2/model" \
  bash stage2/train_text_to_video_sft.sh --config training/sft_config_mini.py \
  --pretrained_model_name_or_path "$MODELS/stage1-fused" "${GAME[@]}" --output_dir "$MODELS/stage2" \
  "${TRAIN_SCALE[@]}" ${STAGE2_ARGS:-}

# The same seeds, so the same commands and noise, for every model.
for model in base:pretrain/model stage1:stage1-fused stage2:stage2/model; do
  name="${model%%:*}"
  phase "evaluate clips: $name" done_or "$RESULTS/clips_$name.json" \
    "${EVALUATE[@]}" clips --model_dir "$MODELS/${model#*:}" --idm "$IDM" --prompt "$PROMPT" \
    --output "$RESULTS/clips_$name.json" --contact_sheet "$RESULTS/sheet_clips_$name.png" "${CLIPS_SCALE[@]}"
done

pack models/stage2 models/stage1-lora results
summary
