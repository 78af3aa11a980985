#!/usr/bin/env bash
# Steps 1 to 7 in one command, on one machine, each step started as soon as what it needs is done: step 2 once
# step 1's VAE is trained (beside step 1's IDM), step 4 once step 3's fuse is done (beside step 3's clips), step 5
# once stage 2 is trained (beside step 4's clips); steps 6 and 7 run alone, so that the student's and the teacher's
# stream speeds are measured alike. The steps' own settings (common.sh: LEARNING_WORK, NUM_STREAMS, STREAM_GPUS,
# <STEP>_ARGS, DRY_RUN, ...) apply; each step's output goes to $LEARNING_WORK/logs/NN.log. A step's phases that
# ran beside another step's record their own wall times, longer than alone.
source "$(dirname "$0")/common.sh"
LOGS="$WORK/logs"
mkdir -p "$LOGS"

# start NN: run step NN in the background (its PID in $STARTED), its timings cleared so that `after` waits for
# this run's phases.
start() {
  rm -f "$RESULTS/timings_$1.tsv"
  bash learning/gpu/"$1"_*.sh > "$LOGS/$1.log" 2>&1 &
  STARTED=$!
  echo "step $1 started (log: $LOGS/$1.log)"
}

# after PID NN PHASE: until step NN has finished PHASE; stop the chain if the step ended without it.
after() {
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
  wait "$1" || { echo "step $2 failed: see $LOGS/$2.log" >&2; exit 1; }
  echo "step $2 done"
}

start 01; STEP1=$STARTED
after "$STEP1" 01 "VAE pretraining"
start 02; finish "$STARTED" 02
finish "$STEP1" 01  # the IDM, which step 3's clips are scored by
start 03; STEP3=$STARTED
after "$STEP3" 03 "stage 1: fuse the LoRA"
start 04; STEP4=$STARTED
after "$STEP4" 04 "stage 2: the Interactive Module"
start 05; STEP5=$STARTED
finish "$STEP3" 03
finish "$STEP4" 04
finish "$STEP5" 05
start 06; finish "$STARTED" 06
start 07; finish "$STARTED" 07
"$PYTHON" learning/results_page.py summary --work "$WORK"
