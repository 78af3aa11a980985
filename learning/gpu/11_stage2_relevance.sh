#!/usr/bin/env bash
# Step 11 (about 6 minutes on one H100; beside step 4 when the chain runs it, CHAIN_STAGE2_RELEVANCE=1): stage 2 as
# step 4 trains it, from the same stage-1 model, with the loss weighted by where the footage shows its controls
# (args.control_relevance_loss_weight = STAGE2_RELEVANCE_WEIGHT, default 3), then its clips scored as step 4 scores
# the recipe's, sampled as the model records, without and with control guidance: the same seeds and commands.
# Carry in: outputs/learning/footage/game, outputs/learning/models/stage1-fused, outputs/learning/idm.
# Returns models/stage2-relevance (its log and control_relevance.json, not its weights), results/.
source "$(dirname "$0")/common.sh"
step 11

# shellcheck disable=SC2086
phase "stage 2, the loss weighted by where the controls show" done_or "$MODELS/stage2-relevance/model" \
  bash stage2/train_text_to_video_sft.sh --config training/sft_config_mini.py \
  --pretrained_model_name_or_path "$MODELS/stage1-fused" "${GAME[@]}" --output_dir "$MODELS/stage2-relevance" \
  --control_relevance_loss_weight "${STAGE2_RELEVANCE_WEIGHT:-3}" "${TRAIN_SCALE[@]}" "${TRAIN_SPEED[@]}" \
  ${STAGE2_ARGS:-}
evaluate_clips stage2_relevance "$MODELS/stage2-relevance/model"
evaluate_clips stage2_relevance_control_guidance_3 "$MODELS/stage2-relevance/model" --control_guidance_scale 3

pack models/stage2-relevance/metrics.jsonl models/stage2-relevance/control_relevance.json results
summary
