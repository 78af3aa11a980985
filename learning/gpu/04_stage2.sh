#!/usr/bin/env bash
# Step 4 (about 7.5 minutes on one H200, estimated): stage 2 (the Interactive Module) with the users' launcher and its mini
# config, then its clips scored as step 3 scored the base and stage-1 models, without and with control guidance,
# sampled as the model records (the mini config drops every caption: the empty caption, no text guidance).
source "$(dirname "$0")/common.sh"
step 04

# shellcheck disable=SC2086
phase "stage 2: the Interactive Module" done_or "$MODELS/stage2/model" \
  bash stage2/train_text_to_video_sft.sh --config training/sft_config_mini.py \
  --pretrained_model_name_or_path "$MODELS/stage1-fused" "${GAME[@]}" --output_dir "$MODELS/stage2" \
  "${TRAIN_SCALE[@]}" "${TRAIN_SPEED[@]}" ${STAGE2_ARGS:-}
evaluate_clips stage2 "$MODELS/stage2/model"
evaluate_clips stage2_control_guidance_3 "$MODELS/stage2/model" --control_guidance_scale 3

pack models/stage2 results
summary
