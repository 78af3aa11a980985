#!/usr/bin/env bash
# Step 11 (a diagnosis, about 9 minutes on one H200 beside step 4's clips): is stage 2 still under-trained? At
# 2,500 steps it was (learning/RESULTS-c1f7329.md: twice the steps, 0.77 -> 0.94 of the ceiling), and at the mini
# config's 5,000 its loss still falls. Continues step 4's run from its last checkpoint to STAGE2_LONGER_STEPS
# (default 10,000, twice the config's: the constant learning rate makes this the run of that many steps), then
# scores its clips as step 4 scores stage 2's, with and without control guidance: the same seeds, so the same
# commands and noise.
# Runs where step 4 ran: it needs footage/game, models/stage1-fused, idm and models/stage2/checkpoints, which step
# 4's parts do not carry.
# Returns results/ and the continued run's losses (its model stays on the machine: models/stage2-longer).
source "$(dirname "$0")/common.sh"
step 11

LONGER="$MODELS/stage2-longer"
LONGER_STEPS="${STAGE2_LONGER_STEPS:-10000}"
if [[ ${DRY_RUN:-0} == 1 ]]; then LONGER_STEPS="${STAGE2_LONGER_STEPS:-4}"; fi  # twice step 4's 2 steps
if [[ ! -e $LONGER/checkpoints ]]; then
  if [[ ! -d $MODELS/stage2/checkpoints ]]; then
    echo "error: $MODELS/stage2/checkpoints is missing: step 11 continues stage 2 from the checkpoints step 4 leaves on" \
      "its machine (its parts do not carry them); run it where step 4 ran" >&2
    exit 1
  fi
  mkdir -p "$LONGER"
  cp -r "$MODELS/stage2/checkpoints" "$LONGER/checkpoints"
fi
# shellcheck disable=SC2086
phase "stage 2 continued to $LONGER_STEPS steps" done_or "$LONGER/model" \
  bash stage2/train_text_to_video_sft.sh --config training/sft_config_mini.py \
  --pretrained_model_name_or_path "$MODELS/stage1-fused" "${GAME[@]}" --output_dir "$LONGER" \
  "${TRAIN_SCALE[@]}" "${TRAIN_SPEED[@]}" ${STAGE2_ARGS:-} --max_train_steps "$LONGER_STEPS" \
  --resume_from_checkpoint latest
# Control guidance 3 first: the measure the prediction in learning/README.md names, in hand should the hold end early.
evaluate_clips stage2_longer_control_guidance_3 "$LONGER/model" --control_guidance_scale 3
evaluate_clips stage2_longer "$LONGER/model"

pack results models/stage2-longer/metrics.jsonl
summary
