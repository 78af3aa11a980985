#!/usr/bin/env bash
# Step 13 (a diagnosis, about 6 minutes on one H200; a GPU with FP8 tensor cores, torchao and bitsandbytes): stage 3
# trained again from step 5's stage-2 model, data order and seeds, with the two lower-precision switches on
# (args.fp8_training, args.use_8bit_adam), then streamed as step 5 streams stage 3: what they do to control
# following, domain fit and drift, beside step 5's measures and loss curve. Without the validation video at the end
# (step 5's last step, after its training): the evaluation's streams are what is compared, and no ffmpeg is needed.
# Carry in: outputs/learning/footage/game, outputs/learning/footage/heldout, outputs/learning/models/stage2/model,
# outputs/learning/idm. Returns the run's log (models/stage3-low-precision, without the model), results/.
source "$(dirname "$0")/common.sh"
step 13

LOW_PRECISION="$MODELS/stage3-low-precision"
# shellcheck disable=SC2086
phase "stage 3: Swin-DPM, FP8 training and 8-bit AdamW" done_or "$LOW_PRECISION/model" \
  bash stage3/train_text_to_video_sft.sh --config training/sft_config_mini.py \
  --pretrained_model_name_or_path "$MODELS/stage2/model" "${GAME[@]}" --output_dir "$LOW_PRECISION" \
  "${TRAIN_SCALE[@]}" "${TRAIN_SPEED[@]}" --fp8_training true --use_8bit_adam true --validation_steps 0 \
  ${STAGE3_ARGS:-}
phase "evaluate streams: stage 3, FP8 training and 8-bit AdamW" \
  done_or "$RESULTS/stream_stage3_low_precision.json" \
  "${EVALUATE[@]}" stream --model_dir "$LOW_PRECISION/model" --sampler swin-dpm \
  --num_inference_steps "$TEACHER_STEPS" --output "$RESULTS/stream_stage3_low_precision.json" \
  --contact_sheet "$RESULTS/sheet_stream_stage3_low_precision.png" "${HELDOUT_STREAMS[@]}"

pack --exclude=model models/stage3-low-precision results
summary
