#!/usr/bin/env bash
# Step 10 (a diagnosis, about 8 minutes on one H200, and a minute or two a compiled run): where a training step of
# each mini run spends its time on this GPU. Each transformer run of the chain (pretraining, stages 1-4) trains a
# few steps on random weights of the mini base model and the standard game's footage, the configs as the chain has
# them, and traces PROFILE_STEPS steps after its warm-up (args.profile_steps): seconds a step, the GPU's busy
# share, its time by kind of work, the host's operator calls a step. Then the runs named in COMPILED_RUNS again with
# `--compile_blocks true`. The weights are random, so only the times mean anything. Carry in:
# outputs/learning/footage/game. Returns results/profile_<run>.json.
source "$(dirname "$0")/common.sh"
step 10

PROFILE_STEPS="${PROFILE_STEPS:-10}"
COMPILED_RUNS="${COMPILED_RUNS-pretrain stage2 stage4}"  # set empty: none
PROFILES="$WORK/profile"
# A launch's steps before its trace begins: the trainer's own count.
WARMUP_STEPS="$("$PYTHON" -c 'from thematrix.training.arguments import PROFILE_WARMUP_STEPS as n; print(n)')"

random_base

# profiled NAME RUN [SETTINGS...]: train RUN's first steps into $PROFILES/NAME and keep its profile as
# results/profile_NAME.json (the traces stay in $PROFILES: a few MB each).
profiled() {
  local name="$1" run="$2"
  local -n launch="${run^^}_RUN"
  shift 2
  random_start "$run" "$PROFILES"
  local steps=$((WARMUP_STEPS + PROFILE_STEPS))
  # shellcheck disable=SC2086
  phase "profile: $name" done_or "$PROFILES/$name/profile.json" \
    ${launch[0]} --config "${launch[1]}" "${START[@]}" "${GAME[@]}" --output_dir "$PROFILES/$name" \
    "${TRAIN_SCALE[@]}" --max_train_steps "$steps" --profile_steps "$PROFILE_STEPS" --checkpointing_steps "$steps" \
    --validation_steps 0 "$@"
  cp "$PROFILES/$name/profile.json" "$RESULTS/profile_$name.json"
}

for run in "${CHAIN_RUNS[@]}"; do profiled "$run" "$run"; done
for run in $COMPILED_RUNS; do profiled "$run-compiled" "$run" --compile_blocks true; done

"$PYTHON" - "$RESULTS" <<'EOF'
import json, sys
from pathlib import Path

print(f"{'run':<20}{'s/step':>8}{'GPU busy':>10}{'host ops/step':>15}  GPU s by kind")
for path in sorted(Path(sys.argv[1]).glob("profile_*.json")):
    profile = json.loads(path.read_text())
    seconds = profile["wall_s"] / (profile["steps"][1] - profile["steps"][0] + 1)
    kinds = ", ".join(f"{kind} {value:.3f}" for kind, value in profile["device_s_by_kind"].items())
    print(f"{path.stem[8:]:<20}{seconds:>8.3f}{profile['device_busy_share']:>10.2f}"
          f"{profile['host_operator_calls_per_step']:>15.0f}  {kinds}")
    calls = ", ".join(f"{name[6:]} {count:.0f}" for name, count in profile["top_host_operators_per_step"].items())
    print(f"{'':<20}most called: {calls}")
EOF
pack results
