#!/usr/bin/env bash
# Step 12 (about 3 minutes on one H200; a GPU with FP8 tensor cores and torchao): the streams of steps 5 and 6 again
# with the blocks' matmuls in FP8 (`--fp8`, as a player may run them), the same clips, seeds and commands: what the
# lower precision does to control following, domain fit and drift, beside the bf16 streams' measures.
# Carry in: outputs/learning/footage/heldout, outputs/learning/models/stage3/model,
# outputs/learning/models/stage4/model, outputs/learning/idm.
# Returns results/.
source "$(dirname "$0")/common.sh"
step 12

phase "evaluate streams: stage 4 student, 4 steps, FP8" done_or "$RESULTS/stream_stage4_fp8.json" \
  "${EVALUATE[@]}" stream --model_dir "$MODELS/stage4/model" --sampler scm --num_inference_steps 4 --fp8 \
  --output "$RESULTS/stream_stage4_fp8.json" --contact_sheet "$RESULTS/sheet_stream_stage4_fp8.png" \
  "${HELDOUT_STREAMS[@]}"
phase "evaluate streams: stage 3 teacher, $TEACHER_STEPS steps, FP8" done_or "$RESULTS/stream_teacher_fp8.json" \
  "${EVALUATE[@]}" stream --model_dir "$MODELS/stage3/model" --sampler swin-dpm --num_inference_steps "$TEACHER_STEPS" \
  --fp8 --output "$RESULTS/stream_teacher_fp8.json" "${HELDOUT_STREAMS[@]}"

pack results
summary
