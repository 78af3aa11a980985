#!/usr/bin/env bash
# Step 4 (about 9 minutes on one H100): stage 2 (the Interactive Module) with the users' launcher and its mini
# config, then its clips scored as step 3 scored the base and stage-1 models, without and with control guidance,
# and under the empty caption it trained with.
# Carry in: outputs/learning/footage/game, outputs/learning/models/stage1-fused (step 3's, or the fuse redone from
# models/pretrain/model and models/stage1-lora), outputs/learning/idm.
# Returns models/stage2 (model and log), results/.
source "$(dirname "$0")/common.sh"
step 04

# shellcheck disable=SC2086
phase "stage 2: the Interactive Module" done_or "$MODELS/stage2/model" \
  bash stage2/train_text_to_video_sft.sh --config training/sft_config_mini.py \
  --pretrained_model_name_or_path "$MODELS/stage1-fused" "${GAME[@]}" --output_dir "$MODELS/stage2" \
  "${TRAIN_SCALE[@]}" "${TRAIN_SPEED[@]}" ${STAGE2_ARGS:-}
evaluate_clips stage2 "$MODELS/stage2/model"
evaluate_clips stage2_control_guidance_3 "$MODELS/stage2/model" --control_guidance_scale 3
# As the module trained: the empty caption (the mini config's caption_p_zero = 1), so no text guidance. The scene
# prompt's guidance may pull the clips toward the pretrained base's driving, where the pedals lose (gas read for
# the brake and for coasting): a diagnosis beside the target's two settings, not one of them.
evaluate_clips stage2_as_trained "$MODELS/stage2/model" --control_guidance_scale 3 --prompt "" --guidance_scale 1

pack models/stage2 results
summary
