#!/usr/bin/env bash
# Step 9 (a diagnosis): does a base model pretrained on more clips render the game's motion? learning/README.md's
# stage-2 findings: the mini base's scenes are too slow, and no stage-2 model trained on it gives the pedals their
# effect on the speed. The base of step 2 trains further with 4x the clips a step, then stage 1 (LoRA, fused) on it;
# both are scored by the scene's speed by commanded pedal beside real footage, stage 1 also by the clips' measures.
# Time: 4,000 steps of 32 clips took 6.5 minutes on an H200; of 128 clips, not measured: likely two commands, the
# pretraining resuming from its checkpoints on a warm machine.
# Carry in: outputs/learning/footage/{broad,game,heldout}, outputs/learning/models/pretrain/model,
# outputs/learning/idm. Returns models/pretrain-more (~42 MB) and results/.
source "$(dirname "$0")/common.sh"
step 09

MORE="$MODELS/pretrain-more"
# shellcheck disable=SC2086
phase "transformer pretraining, continued" done_or "$MORE/model" \
  "$PYTHON" -m thematrix.pretrain.transformer --config thematrix/pretrain/transformer_config_mini.py \
  --pretrained_model_name_or_path "$MODELS/pretrain/model" --from_scratch false --data_root "$FOOTAGE/broad" \
  --index_file "$FOOTAGE/broad/index.json" --output_dir "$MORE" --train_batch_size 128 --max_train_steps 4000 \
  --learning_rate 1e-4 --lr_warmup_steps 100 --validation_steps 0 \
  "${TRAIN_SCALE[@]}" "${TRAIN_SPEED[@]}" ${PRETRAIN_MORE_ARGS:-}
# shellcheck disable=SC2086
phase "stage 1 on it: LoRA fine-tuning" done_or "$MODELS/stage1-more-lora/pytorch_lora_weights.safetensors" \
  bash stage1/train_text_to_video_lora.sh --config training/lora_config_mini.py \
  --pretrained_model_name_or_path "$MORE/model" "${GAME[@]}" --output_dir "$MODELS/stage1-more-lora" \
  --validation_steps 0 "${TRAIN_SCALE[@]}" "${TRAIN_SPEED[@]}" ${STAGE1_ARGS:-}
phase "stage 1 on it: fuse the LoRA" done_or "$MODELS/stage1-more-fused" \
  "$PYTHON" stage1/fuse_lora_weights.py --base_model "$MORE/model" --lora_dir "$MODELS/stage1-more-lora" \
  --output_dir "$MODELS/stage1-more-fused"

evaluate_clips stage1_more "$MODELS/stage1-more-fused" --prompt "$PROMPT"
scene_speeds base_more "$MORE/model" --prompt "$PROMPT"
scene_speeds stage1_more "$MODELS/stage1-more-fused" --prompt "$PROMPT"

pack models/pretrain-more results
summary
