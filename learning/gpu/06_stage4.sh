#!/usr/bin/env bash
# Step 6 (about 8 minutes on one H100): stage 4 (SCM) with the users' launcher and its mini config, then the
# 4-step student's streams. Step 7 streams the teacher on the same warm machine, so that speeds compare.
# Carry in: outputs/learning/footage/game, outputs/learning/footage/heldout, outputs/learning/models/stage3/model,
# outputs/learning/idm. Returns models/stage4 (model and log), results/.
source "$(dirname "$0")/common.sh"
step 06

# shellcheck disable=SC2086
phase "stage 4: SCM distillation" done_or "$MODELS/stage4/model" \
  bash stage4/train_text_to_video_scm.sh --config training/scm_config_mini.py \
  --pretrained_model_name_or_path "$MODELS/stage3/model" "${GAME[@]}" --output_dir "$MODELS/stage4" \
  "${TRAIN_SCALE[@]}" "${TRAIN_SPEED[@]}" ${STAGE4_ARGS:-}
phase "evaluate streams: stage 4 student, 4 steps" done_or "$RESULTS/stream_stage4.json" \
  "${EVALUATE[@]}" stream --model_dir "$MODELS/stage4/model" --sampler scm --num_inference_steps 4 \
  --output "$RESULTS/stream_stage4.json" --contact_sheet "$RESULTS/sheet_stream_stage4.png" "${HELDOUT_STREAMS[@]}"

pack models/stage4 results
summary
