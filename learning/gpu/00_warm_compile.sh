#!/usr/bin/env bash
# Step 0 (a chain's helper: a minute or so a run, on a GPU that step 1 leaves idle): warm torch.compile's caches on
# this machine for the chain's compiled training runs. Each transformer run (pretraining, stages 1-4) trains
# WARM_STEPS steps on random weights, with the chain's settings and the first clips of the random-colour footage
# (the shape of every run's clips); the graphs and kernels compiled stay in inductor's and Triton's caches on disk,
# where steps 2-6 find them instead of compiling them at their first step (20-59 s a run when cold, on an H200).
# Needs footage/broad and the random base model (step 1's first phases). Returns nothing: the caches stay here.
source "$(dirname "$0")/common.sh"
step 00
# Its compiles run on many cores at once: below step 1 in the CPU's queue, which trains the VAE beside it, and on
# the last quarter of the cores (WARM_CORES, a taskset list; inductor sizes its compile workers to them). Unpinned,
# the VAE's steps, whose data loader decodes video, slowed from 0.087 to 0.11 s (55 s more on the chain's path, two
# H200s of one host).
renice -n 10 $$ > /dev/null || true  # a host without renice compiles at the same priority
CORES=$(nproc)
WARM_CORES="${WARM_CORES:-$((CORES - (CORES + 3) / 4))-$((CORES - 1))}"
taskset -cp "$WARM_CORES" $$ > /dev/null || echo "step 00: could not pin to cores $WARM_CORES; compiling on all" >&2

WARM="$WORK/compile-warmup"
WARM_STEPS=2
WARM_CLIPS=64  # two batches of the largest, pretraining's 32: encoding all the footage would outlast the compiles
mkdir -p "$WARM"

random_base
"$PYTHON" - "$FOOTAGE/broad/index.json" "$WARM/index.json" "$WARM_CLIPS" << 'EOF'
import json, sys
index = json.load(open(sys.argv[1]))
json.dump(dict(index, list=index["list"][: int(sys.argv[3])]), open(sys.argv[2], "w"))
EOF

# warm RUN: RUN's first steps as the chain runs them (its <RUN>_ARGS too), into $WARM/RUN.
warm() {
  local run="$1" extra="${1^^}_ARGS"
  local -n launch="${run^^}_RUN"
  random_start "$run" "$WARM"
  rm -rf "${WARM:?}/$run"
  # shellcheck disable=SC2086
  phase "compile: $run" ${launch[0]} --config "${launch[1]}" "${START[@]}" \
    --data_root "$FOOTAGE/broad" --index_file "$WARM/index.json" --output_dir "$WARM/$run" \
    "${TRAIN_SCALE[@]}" "${TRAIN_SPEED[@]}" ${!extra:-} --max_train_steps "$WARM_STEPS" \
    --checkpointing_steps "$WARM_STEPS" --validation_steps 0
}

for run in "${CHAIN_RUNS[@]}"; do warm "$run"; done
step_total
summary
