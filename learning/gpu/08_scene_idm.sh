#!/usr/bin/env bash
# Step 8 (about 5 minutes on one H100, and about a minute a model for the speeds): an IDM that does not read
# CarRacing's HUD, and the clips of stages 1 and 2 scored by it beside the IDM of step 1; then their scenes' speeds
# by commanded pedal beside real footage's. The HUD (the frames' bottom rows) draws the steering and the wheels'
# spin, so the keys can be read from it alone; with it blanked the IDM reads them from how the scene moves.
# Carry in: outputs/learning/footage/{game,heldout}, outputs/learning/idm, outputs/learning/models/stage1-fused,
# outputs/learning/models/stage2/model.
# Returns idm_scene/ (its measures and weights, 2 MB), results/.
source "$(dirname "$0")/common.sh"
step 08

SCENE_IDM="$WORK/idm_scene"
# shellcheck disable=SC2086
phase "inverse-dynamics model without the HUD" done_or "$SCENE_IDM/reference.safetensors" \
  "${EVALUATE[@]}" idm --model_dir "$MODELS/stage1-fused" --data_root "$FOOTAGE/game" \
  --index_file "$FOOTAGE/game/index.json" --heldout_data_root "$FOOTAGE/heldout" \
  --heldout_index_file "$FOOTAGE/heldout/index.json" --fps 10 --max_frames "$HELDOUT_FRAMES" \
  --bin_frames "$BIN_FRAMES" --ignored_box "${HUD_BOX[@]}" --output_dir "$SCENE_IDM" "${IDM_SCALE[@]}" ${IDM_ARGS:-}

# The same seeds as steps 3 and 4, so the same commands and noise; each model scored by both IDMs.
for idm in "":"$IDM" _scene:"$SCENE_IDM"; do
  suffix="${idm%%:*}"
  evaluate_clips "stage1$suffix" "$MODELS/stage1-fused" --idm "${idm#*:}" --prompt "$PROMPT"
  evaluate_clips "stage2$suffix" "$MODELS/stage2/model" --idm "${idm#*:}"
  evaluate_clips "stage2_control_guidance_3$suffix" "$MODELS/stage2/model" --idm "${idm#*:}" --control_guidance_scale 3
done

# Stage 2 sampled as it records, with control guidance 3; stage 1 under the scene prompt, as its clips' measures.
scene_speeds stage1 "$MODELS/stage1-fused" --prompt "$PROMPT"
scene_speeds stage2 "$MODELS/stage2/model"

pack idm_scene results
summary
