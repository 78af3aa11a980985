#!/usr/bin/env bash
# Steps 1 to 7 in one command (and step 0 on two GPUs), on one machine, each step started as soon as what it needs
# is done. The steps' own settings (common.sh: LEARNING_WORK, NUM_STREAMS, COMPILE_BLOCKS, <STEP>_ARGS, DRY_RUN, ...)
# apply; each step's output goes to $LEARNING_WORK/logs/NN.log. A step's phases that ran beside another step's
# record their own wall times, longer than alone.
#
#   CHAIN_GPUS  the GPU ids the steps share, e.g. 0,1 (default: the machine's GPUs as each step finds them). One
#               GPU: step 2 starts once step 1's VAE is trained (beside its IDM), step 4 once step 3's fuse is done
#               (beside its clips), step 5 once stage 2 is trained (beside step 4's clips), steps 6 and 7 alone, so
#               that the student's and the teacher's stream speeds are measured alike. Two GPUs: the steps alternate
#               between them; step 6 starts once stage 3 is trained, beside step 5's streams, and makes the
#               student's streams on both GPUs, half on each (step 5's are done by then); step 7 follows, on both.
#               Every stream speed is then one GPU's while the other works, and the student's are measured before
#               the teacher's optional 4-step streams, the chain's last and least needed measure. With
#               COMPILE_BLOCKS=1 (the default) step 0 warms the compile caches on the first GPU while step 1 makes
#               the VAE; one GPU has no idle time for it.
#   CHAIN_STEPS the steps to run (default: "01 02 03 04 05 06 07"), in the chain's order whatever the order given;
#               a step left out is taken as done (its outputs in $LEARNING_WORK, e.g. carried in). Step 11 (stage 2
#               continued, a diagnosis) runs only when named, beside step 4's clips once stage 2 is trained.
source "$(dirname "$0")/common.sh"
LOGS="$WORK/logs"
mkdir -p "$LOGS"
IFS=, read -r -a CHAIN_GPU_IDS <<< "${CHAIN_GPUS:-0}"
if (( ${#CHAIN_GPU_IDS[@]} > 2 )); then
  echo "error: CHAIN_GPUS=$CHAIN_GPUS: the chain uses one GPU or two; for the streams of more, set STREAM_GPUS" >&2
  exit 2
fi
FIRST="${CHAIN_GPU_IDS[0]}"
SECOND="${CHAIN_GPU_IDS[1]:-$FIRST}"
# Steps that run at once each size their CPU thread pools to a share of the cores (unless OMP_NUM_THREADS is set):
# pools sized to the whole machine spin against each other and slow the threads that launch the GPU's kernels.
THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / ${#CHAIN_GPU_IDS[@]} ))}"

CHAIN_STEPS="${CHAIN_STEPS:-01 02 03 04 05 06 07}"
for name in $CHAIN_STEPS; do
  if [[ " 01 02 03 04 05 06 07 11 " != *" $name "* ]]; then
    echo "error: CHAIN_STEPS=\"$CHAIN_STEPS\": the chain runs steps 01 to 07 and 11, not '$name'" >&2
    exit 2
  fi
done

# start NN GPUS [NAME=VALUE...]: run step NN in the background on GPUS (its PID in $STARTED), with the settings
# given, its timings cleared so that `after` waits for this run's phases; unless CHAIN_STEPS leaves it out
# ($STARTED empty: `after` and `finish` take it as done). Step 0, the chain's helper, runs beside step 1 only.
start() {
  STARTED=""
  [[ $1 == 00 || " $CHAIN_STEPS " == *" $1 "* ]] || return 0
  rm -f "$RESULTS/timings_$1.tsv"
  env ${CHAIN_GPUS:+CUDA_VISIBLE_DEVICES="$2"} OMP_NUM_THREADS="$THREADS" "${@:3}" bash learning/gpu/"$1"_*.sh \
    > "$LOGS/$1.log" 2>&1 &
  STARTED=$!
  echo "step $1 started${CHAIN_GPUS:+ on GPU $2}${3:+ with ${*:3}} (log: $LOGS/$1.log)"
}

# after PID NN PHASE: until step NN has finished PHASE; stop the chain if the step ended without it.
after() {
  [[ -n $1 ]] || return 0
  until grep -qF "$3" "$RESULTS/timings_$2.tsv" 2>/dev/null; do
    if ! kill -0 "$1" 2>/dev/null; then
      echo "step $2 ended before '$3': see $LOGS/$2.log" >&2
      exit 1
    fi
    sleep 5
  done
}

# finish PID NN: wait for step NN; stop the chain if it failed.
finish() {
  [[ -n $1 ]] || return 0
  wait "$1" || { echo "step $2 failed: see $LOGS/$2.log" >&2; exit 1; }
  echo "step $2 done"
}

start 01 "$SECOND"; STEP1=$STARTED
WARMING=""
if [[ -n $STEP1 && $FIRST != "$SECOND" && ${COMPILE_BLOCKS:-0} == 1 ]]; then
  # The first GPU idles until the VAE is trained: it compiles the runs' blocks meanwhile, into the caches on disk.
  after "$STEP1" 01 "random mini base model"
  start 00 "$FIRST"; WARMING=$STARTED
fi
after "$STEP1" 01 "VAE pretraining"
start 02 "$FIRST"; finish "$STARTED" 02
finish "$STEP1" 01  # the IDM, which step 3's clips are scored by
start 03 "$SECOND"; STEP3=$STARTED
after "$STEP3" 03 "stage 1: fuse the LoRA"
start 04 "$FIRST"; STEP4=$STARTED
after "$STEP4" 04 "stage 2: the Interactive Module"
start 05 "$SECOND"; STEP5=$STARTED
start 11 "$FIRST"; STEP11=$STARTED
finish "$STEP3" 03
finish "$STEP4" 04
finish "$STEP11" 11
if [[ $FIRST == "$SECOND" ]]; then
  finish "$STEP5" 05
  start 06 "$FIRST"; finish "$STARTED" 06
  start 07 "$FIRST"; finish "$STARTED" 07
else
  # Step 6 trains on the first GPU it sees; its streams, like step 7's, split over both (ids as the step sees them;
  # a dry run on a machine without GPUs keeps them in one process).
  SPLIT=()
  if "$PYTHON" -c 'import sys, torch; sys.exit(torch.cuda.device_count() < 2)'; then SPLIT=(STREAM_GPUS=0,1); fi
  after "$STEP5" 05 "stage 3: Swin-DPM"
  start 06 "$FIRST,$SECOND" "${SPLIT[@]}"; STEP6=$STARTED
  finish "$STEP5" 05
  finish "$STEP6" 06
  start 07 "$FIRST,$SECOND" "${SPLIT[@]}"; finish "$STARTED" 07
fi
# Without its warm caches the runs compile at their first step, as without step 0: no reason to stop.
if [[ -n $WARMING ]] && ! wait "$WARMING"; then echo "step 00 failed (the runs compiled cold): see $LOGS/00.log"; fi
"$PYTHON" learning/results_page.py summary --work "$WORK"
