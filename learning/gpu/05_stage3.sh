#!/usr/bin/env bash
# Step 5 (about 7 minutes on one H100): stage 3 (Swin-DPM) with the users' launcher and its mini config, then
# 2,000-frame streams: control following and drift.
# Carry in: outputs/learning/footage/game, outputs/learning/footage/heldout, outputs/learning/models/stage2/model,
# outputs/learning/idm. Returns models/stage3 (model and log), results/.
source "$(dirname "$0")/common.sh"
step 05

# shellcheck disable=SC2086
phase "stage 3: Swin-DPM" done_or "$MODELS/stage3/model" \
  bash stage3/train_text_to_video_sft.sh --config training/sft_config_mini.py \
  --pretrained_model_name_or_path "$MODELS/stage2/model" "${GAME[@]}" --output_dir "$MODELS/stage3" \
  "${TRAIN_SCALE[@]}" "${TRAIN_SPEED[@]}" ${STAGE3_ARGS:-}
phase "evaluate streams: stage 3" done_or "$RESULTS/stream_stage3.json" \
  "${EVALUATE[@]}" stream --model_dir "$MODELS/stage3/model" --sampler swin-dpm \
  --num_inference_steps "$TEACHER_STEPS" --output "$RESULTS/stream_stage3.json" \
  --contact_sheet "$RESULTS/sheet_stream_stage3.png" "${HELDOUT_STREAMS[@]}"

pack models/stage3 results
summary
