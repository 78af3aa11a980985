#!/usr/bin/env bash
# Step 3 (about 3 minutes on one H100): stage 1 (LoRA on the standard game) with the users' launcher and its mini
# config, the fuse, then clips of the base and the stage-1 models.
# Carry in: outputs/learning/footage/game, outputs/learning/models/pretrain/model, outputs/learning/idm.
# Returns models/stage1-lora (weights and log), results/.
source "$(dirname "$0")/common.sh"
step 03

# shellcheck disable=SC2086
phase "stage 1: LoRA fine-tuning" done_or "$MODELS/stage1-lora/pytorch_lora_weights.safetensors" \
  bash stage1/train_text_to_video_lora.sh --config training/lora_config_mini.py \
  --pretrained_model_name_or_path "$MODELS/pretrain/model" "${GAME[@]}" --output_dir "$MODELS/stage1-lora" \
  "${TRAIN_SCALE[@]}" "${TRAIN_SPEED[@]}" ${STAGE1_ARGS:-}
phase "stage 1: fuse the LoRA" done_or "$MODELS/stage1-fused" \
  "$PYTHON" stage1/fuse_lora_weights.py --base_model "$MODELS/pretrain/model" --lora_dir "$MODELS/stage1-lora" \
  --output_dir "$MODELS/stage1-fused"

# The same seeds, so the same commands and noise, for every model (step 4 scores stage 2 alike), and the same scene
# prompt: the base model records none, stage 1 its footage's first caption.
for model in base:pretrain/model stage1:stage1-fused; do
  evaluate_clips "${model%%:*}" "$MODELS/${model#*:}" --prompt "$PROMPT"
done

pack models/stage1-lora results
summary
