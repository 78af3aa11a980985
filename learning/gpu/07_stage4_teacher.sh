#!/usr/bin/env bash
# Step 7 (about 9 minutes on one H200 with 6 streams a measure, the compiled paired speed about 3 of them; less where
# step 5 streamed on the same kind of GPU): the stage-3 teacher's streams at its own 20 steps and at the student's
# 4, then the student's speed over the teacher's, both timed in turn in one process (the speed target's measure:
# the streams' own speeds, measured apart, drift with the machine), compiled as a player runs them (COMPILE_BLOCKS).
# Carry in: outputs/learning/footage/heldout, outputs/learning/models/stage3/model, outputs/learning/models/stage4/model,
# outputs/learning/idm.
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
phase "paired speed: stage 4 student, 4 steps, over the teacher, $TEACHER_STEPS steps" \
  done_or "$RESULTS/speed_stage4.json" \
  "${EVALUATE[@]}" speed --model_dir "$MODELS/stage4/model" --sampler scm --num_inference_steps 4 \
  --baseline_model_dir "$MODELS/stage3/model" --baseline_sampler swin-dpm \
  --baseline_num_inference_steps "$TEACHER_STEPS" --idm "$IDM" --data_root "$FOOTAGE/heldout" \
  --index_file "$FOOTAGE/heldout/index.json" --prompt "$PROMPT" --overlap_decode --output "$RESULTS/speed_stage4.json" \
  "${SPEED_SCALE[@]}" "${SPEED_PATH[@]}"

pack results
summary
