#!/usr/bin/env bash
# Step 7 (about 4 minutes on one H100, 1 where step 5 streamed on the same kind of GPU): the stage-3 teacher's
# streams at its own 20 steps and at the student's 4, on the machine that ran step 6, so that the student's speed
# compares with the teacher's.
# Carry in: outputs/learning/footage/heldout, outputs/learning/models/stage3/model, outputs/learning/idm.
# Returns results/.
source "$(dirname "$0")/common.sh"
step 07

# Step 5 streamed the same model at the teacher's steps from the same clips and seeds: on the same kind of GPU its
# streams are the teacher's, and are not made again.
reuse_streams stream_stage3 stream_teacher
phase "evaluate streams: stage 3 teacher, $TEACHER_STEPS steps" done_or "$RESULTS/stream_teacher.json" \
  "${EVALUATE[@]}" stream --model_dir "$MODELS/stage3/model" --sampler swin-dpm --num_inference_steps "$TEACHER_STEPS" \
  --output "$RESULTS/stream_teacher.json" "${HELDOUT_STREAMS[@]}"
phase "evaluate streams: stage 3 teacher, 4 steps" done_or "$RESULTS/stream_teacher_4_steps.json" \
  "${EVALUATE[@]}" stream --model_dir "$MODELS/stage3/model" --sampler swin-dpm --num_inference_steps 4 \
  --output "$RESULTS/stream_teacher_4_steps.json" "${HELDOUT_STREAMS[@]}"

pack results
summary
