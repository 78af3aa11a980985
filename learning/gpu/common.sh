# Sourced by learning/gpu/0N_*.sh: folders, the scale of a run, timed phases, packing what goes back.
#
#   LEARNING_WORK  the chain's folder (default: outputs/learning): footage/, models/, idm/, results/
#   OUT            where a step leaves its parts to carry back (default: $LEARNING_WORK/out/<step>)
#   DRY_RUN=1      the same commands at toy sizes (a few clips, 2 steps, short videos): checks a step on the
#                  CPU before GPU time is spent on it; its numbers mean nothing
#   PYTHON         the interpreter (default: python)
#   NUM_CLIPS      clips per clip measure (default 32; 64 bring two standard errors of stage 2's share of the
#                  ceiling from about 0.09 to 0.06, and add about two minutes to steps 3 and 4)
#   NUM_STREAMS    held-out streams per stream measure (default 4; 16 bring two standard errors of stage 3's
#                  first-to-last change to about 10%, and take steps 5-7 past 10 minutes each on one GPU)
#   STREAM_GPUS    GPU ids the stream measures split their streams over, e.g. 0,1,2,3 (default: the one GPU);
#                  compare the speeds of measures made alike
#   COMPILE_BLOCKS training's transformer blocks compiled (args.compile_blocks), and the paired speed's streams
#                  (--compile), 1 or 0 (default 1; 0 in a dry run): the mini model's steps are bound by the host's
#                  operator calls, which compiling cuts; eager, the speeds of one stream vary by a third between rounds
#   DRIVER         the footage's driver, data/record_carracing.py --driver (default: track, which keeps the car on
#                  the track, where the pedals show; random is what learning/RESULTS-first-chain.md's chain recorded)
#   <STEP>_ARGS    extra settings for one run, e.g. STAGE2_ARGS="--max_train_steps 3000" (PRETRAIN_VAE_ARGS,
#                  PRETRAIN_ARGS, STAGE1_ARGS, STAGE2_ARGS, STAGE3_ARGS, STAGE4_ARGS, IDM_ARGS)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
mkdir -p "${LEARNING_WORK:=outputs/learning}"
WORK="$(cd "$LEARNING_WORK" && pwd)"
FOOTAGE="$WORK/footage"
MODELS="$WORK/models"
IDM="$WORK/idm"
RANDOM_BASE="$MODELS/base-mini-random"  # the mini base model with random weights: what pretraining starts from
RESULTS="$WORK/results"
mkdir -p "$FOOTAGE" "$MODELS" "$RESULTS"
# The prompt of every evaluated video: the standard game's scene, without the motions captions append, so the
# text does not steer where the controls should.
PROMPT="A top-down view of a red race car on a grey track surrounded by green grass."
# Part size of what goes back: the device returns files of at most 16 MiB.
PART_SIZE=15m
EVALUATE=("$PYTHON" -m thematrix.evaluation)
# The stages' clips, and one latent cache for all: their models share the VAE and text encoder (hard-linked), so each
# stage after the first finds the clips encoded (stage 3 and 4 encode their windows apart from stages 1 and 2's).
GAME=(--data_root "$FOOTAGE/game" --index_file "$FOOTAGE/game/index.json" --cache_dir "$WORK/latent-cache/game")
# CarRacing's HUD in the 96x144 frames: rows 84-95 (the rows above take its edge blurred by the VAE), all columns;
# TOP BOTTOM LEFT RIGHT as the IDM's --ignored_box takes them.
HUD_BOX=(82 96 0 144)

if [[ ${DRY_RUN:-0} == 1 ]]; then
  BROAD_EPISODES=2 GAME_EPISODES=2 HELDOUT_EPISODES=2 DRIFT_EPISODES=2 RECORDERS=2
  HELDOUT_FRAMES=41  # streams start from 41 frames; no 100-frame bins at this size
  DRIFT_FRAMES=41
  BIN_FRAMES=16
  TRAIN_SCALE=(--max_train_steps 2 --train_batch_size 1 --checkpointing_steps 1 --validation_steps 0
               --dataloader_num_workers 0)
  VAE_SCALE=(--max_train_steps 2 --train_batch_size 1 --scaling_clips 1 --dataloader_num_workers 0)
  IDM_SCALE=(--steps 2 --batch_size 8)
  BENCHMARK_SCALE=(--batch_size 1)
  CLIPS_SCALE=(--num_clips 1 --num_inference_steps 2)
  STREAM_SCALE=(--num_streams 1 --num_frames 32 --edge_frames 16)
  SPEED_SCALE=(--num_frames 32 --rounds 2)
  TEACHER_STEPS=8  # two steps per band: the teacher and its 4-step run differ
  MOTION_SCALE=(--num_clips 1 --num_inference_steps 2)
else
  # 240 random-colour episodes x 3 clips (720 clips, 29,520 frames) for pretraining; 100 standard episodes x 3
  # (300 clips) for the stages and the IDM; 32 held-out standard episodes of 105 frames (one 100-frame bin each;
  # 105 = 1 + 4 * 26: an odd number of latent frames, which the VAE decodes back to the same length).
  # 24 episodes of the random driver, one 1,001-frame clip each (10 bins): the drift reference (step 1's IDM
  # --drift_data_root). Its car leaves the track as the streams' random keys do; an episode that drives off the
  # playfield ends early and records no clip (10 of the 24 on the CPU here).
  BROAD_EPISODES=240 GAME_EPISODES=100 HELDOUT_EPISODES=32 DRIFT_EPISODES=24 RECORDERS="$(nproc)"
  HELDOUT_FRAMES=105
  DRIFT_FRAMES=1001
  BIN_FRAMES=100
  TRAIN_SCALE=() VAE_SCALE=() IDM_SCALE=() BENCHMARK_SCALE=()
  : "${COMPILE_BLOCKS:=1}"
  CLIPS_SCALE=(--num_clips "${NUM_CLIPS:-32}")
  STREAM_SCALE=(--num_streams "${NUM_STREAMS:-4}")
  SPEED_SCALE=()  # the speed command's 5 rounds of 400-frame streams: under a minute for the mini models
  TEACHER_STEPS=20  # stage 3's stream default, which stage 4 distils
  MOTION_SCALE=(--num_clips 32)
fi
TRAIN_SPEED=() SPEED_PATH=()
if [[ ${COMPILE_BLOCKS:-0} == 1 ]]; then TRAIN_SPEED=(--compile_blocks true) SPEED_PATH=(--compile); fi
# random_base: make $RANDOM_BASE, unless there.
random_base() {
  phase "random mini base model" done_or "$RANDOM_BASE" \
    "$PYTHON" -m thematrix.base_model --preset mini --dtype bfloat16 --output_dir "$RANDOM_BASE"
}
# The chain's transformer runs, in order, and each one's launcher and mini config, as steps 2-6 start them (with
# their own input models).
CHAIN_RUNS=(pretrain stage1 stage2 stage3 stage4)
PRETRAIN_RUN=("$PYTHON -m thematrix.pretrain.transformer" thematrix/pretrain/transformer_config_mini.py)
STAGE1_RUN=("bash stage1/train_text_to_video_lora.sh" training/lora_config_mini.py)
STAGE2_RUN=("bash stage2/train_text_to_video_sft.sh" training/sft_config_mini.py)
STAGE3_RUN=("bash stage3/train_text_to_video_sft.sh" training/sft_config_mini.py)
STAGE4_RUN=("bash stage4/train_text_to_video_scm.sh" training/scm_config_mini.py)
# random_start RUN FOLDER: RUN's input model settings (in START) where the chain's runs train on random weights,
# each run's output in FOLDER/<run> (steps 0 and 10): pretraining from scratch and stages 1-2 from $RANDOM_BASE,
# stages 3 and 4 from the run before's output, whose modules they load.
random_start() {
  case "$1" in
    pretrain) START=(--pretrained_model_name_or_path "$RANDOM_BASE" --from_scratch true) ;;
    stage1 | stage2) START=(--pretrained_model_name_or_path "$RANDOM_BASE") ;;
    stage3) START=(--pretrained_model_name_or_path "$2/stage2/model") ;;
    stage4) START=(--pretrained_model_name_or_path "$2/stage3/model") ;;
    *) echo "random_start: no run '$1' (runs: ${CHAIN_RUNS[*]})" >&2; return 1 ;;
  esac
}
# The streams of stages 3 and 4: from held-out clips, scored by the IDM per bin of frames; each group decoded while
# the next one's forwards run, as a player runs the stream (the same frames; the speed is the teacher's and the
# student's alike).
HELDOUT_STREAMS=(--idm "$IDM" --data_root "$FOOTAGE/heldout" --index_file "$FOOTAGE/heldout/index.json"
                 --bin_frames "$BIN_FRAMES" --prompt "$PROMPT" --overlap_decode "${STREAM_SCALE[@]}"
                 ${STREAM_GPUS:+--gpus "$STREAM_GPUS"})
STEP_OUT=""

# step NAME: name this step; its parts go to $OUT (or $WORK/out/NAME), its timings to results/timings_NAME.tsv.
# The timings of an earlier run are kept aside until step_total: a rerun that skips every phase keeps them.
step() {
  STEP_NAME="$1"
  STEP_OUT="${OUT:-$WORK/out/$STEP_NAME}"
  mkdir -p "$STEP_OUT"
  TIMINGS="$RESULTS/timings_$STEP_NAME.tsv"
  EARLIER_TIMINGS="$(cat "$TIMINGS" 2>/dev/null || true)"
  : > "$TIMINGS"
  STEP_START=$SECONDS
  PHASES_RUN=0
}

# phase NAME COMMAND...: run COMMAND, print and record its wall time.
phase() {
  local name="$1" start=$SECONDS
  shift
  printf '\n=== %s: %s\n' "$STEP_NAME" "$name"
  SKIPPED=0
  "$@"
  (( SKIPPED )) || PHASES_RUN=$((PHASES_RUN + 1))
  printf '%s\t%s\t%d\n' "$STEP_NAME" "$name" "$((SECONDS - start))" >> "$TIMINGS"
}

# done_or PATH COMMAND...: run COMMAND unless PATH exists (a rerun on a warm machine skips finished work).
done_or() {
  local path="$1"
  shift
  if [[ -e $path ]]; then echo "$path exists: skipped"; SKIPPED=1; else "$@"; fi
}

# record NAME EPISODES SEED FRAMES CLIPS [RECORDER FLAGS...]: CarRacing footage into $FOOTAGE/NAME.
record() {
  local name="$1" episodes="$2" seed="$3" frames="$4" clips="$5"
  shift 5
  "$PYTHON" learning/record_footage.py --output_dir "$FOOTAGE/$name" --episodes "$episodes" --processes "$RECORDERS" \
    --seed "$seed" -- --clips_per_episode "$clips" --frames_per_clip "$frames" --fps 10 --resolution 96x144 \
    --driver "${DRIVER:-track}" "$@"
}

# step_total: record the step's wall time so far as its total; where no phase ran, the earlier run's timings stay.
step_total() {
  if (( PHASES_RUN == 0 )) && [[ -n $EARLIER_TIMINGS ]]; then
    printf '%s\n' "$EARLIER_TIMINGS" > "$TIMINGS"
  else
    printf '%s\t%s\t%d\n' "$STEP_NAME" "total" "$((SECONDS - STEP_START))" >> "$TIMINGS"
  fi
}

# pack PATH...: paths relative to $WORK, as tar parts of at most $PART_SIZE in the step's output folder, with
# what they hold listed beside them. learning/unpack.sh puts them back.
pack() {
  local archive="$STEP_OUT/$STEP_NAME.tar"
  step_total
  tar -C "$WORK" --exclude='checkpoints' --exclude='cache' --exclude='*.partial' --exclude='*.streams' -cf - "$@" | split -b "$PART_SIZE" -d - "$archive.part-"
  tar -tvf <(cat "$archive".part-*) > "$STEP_OUT/$STEP_NAME.contents.txt"
  du -h "$STEP_OUT"/*
}

# evaluate_clips NAME MODEL_DIR [SETTINGS...]: clips of a model under the evaluation's random commands (the same
# seeds for every model, so the same commands and noise), scored into results/clips_NAME.json with a contact sheet.
# Sampled as the model's record says (its prompt and text guidance) where SETTINGS do not say otherwise.
evaluate_clips() {
  local name="$1" model_dir="$2"
  shift 2
  phase "evaluate clips: $name" done_or "$RESULTS/clips_$name.json" \
    "${EVALUATE[@]}" clips --model_dir "$model_dir" --idm "$IDM" \
    --output "$RESULTS/clips_$name.json" --contact_sheet "$RESULTS/sheet_clips_$name.png" "${CLIPS_SCALE[@]}" "$@"
}

# scene_speeds NAME MODEL_DIR [SETTINGS...]: the scene's speed and its change per latent frame by commanded pedal, in
# the model's clips (the evaluation's commands and seeds) and in held-out footage, into results/pedal_dynamics_NAME.json.
scene_speeds() {
  local name="$1" model_dir="$2"
  shift 2
  phase "scene speeds: $name" done_or "$RESULTS/pedal_dynamics_$name.json" \
    "$PYTHON" learning/pedal_dynamics.py --model_dir "$model_dir" --data_root "$FOOTAGE/heldout" \
    --index_file "$FOOTAGE/heldout/index.json" --scene_rows 0 "${HUD_BOX[0]}" --output "$RESULTS/pedal_dynamics_$name.json" \
    "${MOTION_SCALE[@]}" "$@"
}

# reuse_streams FROM TO: the stream measure TO starts from the stream records of FROM (results/FROM.json's), which
# made the same streams on this kind of GPU: its command then makes only the streams FROM lacks. Elsewhere nothing.
reuse_streams() {
  local from="$RESULTS/$1" to="$RESULTS/$2"
  [[ -e $from.json && -d $from.streams && ! -e $to.streams ]] || return 0
  if "$PYTHON" -c 'import json, sys; from thematrix.evaluation.report import device_name
sys.exit(json.load(open(sys.argv[1]))["environment"]["device"] != device_name())' "$from.json"; then
    cp -r "$from.streams" "$to.streams"
    echo "$to: starts from the streams of $from"
  fi
}

summary() {
  "$PYTHON" learning/results_page.py summary --work "$WORK" --step "$STEP_NAME"
}
