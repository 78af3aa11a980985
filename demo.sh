#!/usr/bin/env bash
# The whole recipe on the tiny model and freshly recorded CarRacing footage, on the CPU in minutes.
# Each step is the command a user runs; outputs go to outputs/demo/. Re-running resumes. The tiny
# model starts from random weights: the videos show that everything runs, not what it learns.
# Inference takes the frame rate, window and size from each model directory.
set -euo pipefail
cd "$(dirname "$0")"
DEMO=outputs/demo

step() { printf '\n=== %s\n' "$*"; }

step "Base model: the tiny CogVideoX twin (python -m thematrix.base_model)"
if [ ! -f "$DEMO/base-tiny/model_index.json" ]; then
  python -m thematrix.base_model --preset tiny --output_dir "$DEMO/base-tiny"
fi

step "Footage: CarRacing-v3 clips with per-frame controls (data/record_carracing.py)"
if [ ! -f "$DEMO/footage/index.json" ]; then
  python data/record_carracing.py --output_dir "$DEMO/footage" --episodes 2 --clips_per_episode 3 \
    --frames_per_clip 33 --resolution 96x128 --seed 0
fi
python -m thematrix.data.validate --data_root "$DEMO/footage" --index_file "$DEMO/footage/index.json"

step "Stage 1: LoRA fine-tuning (stage1/train_text_to_video_lora.sh)"
(cd stage1 && bash train_text_to_video_lora.sh --config training/lora_config_tiny.py)

step "Stage 1: fuse the LoRA into the base model (stage1/fuse_lora_weights.py)"
(cd stage1 && python fuse_lora_weights.py --base_model ../$DEMO/base-tiny --lora_dir ../$DEMO/stage1-lora \
  --output_dir ../$DEMO/stage1-fused)

step "Stage 1: generate a video (stage1/inference.py)"
(cd stage1 && python inference.py --model_dir ../$DEMO/stage1-fused --num_inference_steps 10 \
  --output ../$DEMO/stage1.mp4)

step "Stage 2: the Interactive Module (stage2/train_text_to_video_sft.sh)"
(cd stage2 && bash train_text_to_video_sft.sh --config training/sft_config_tiny.py)

step "Stage 2: a video steered by controls (stage2/inference.py)"
(cd stage2 && python inference.py --model_dir ../$DEMO/stage2/model --controls "D,D,DL,DL,DR" \
  --num_frames 17 --num_inference_steps 10 --output ../$DEMO/stage2.mp4)

step "Stage 3: Swin-DPM fine-tuning (stage3/train_text_to_video_sft.sh)"
(cd stage3 && bash train_text_to_video_sft.sh --config training/sft_config_tiny.py)

step "Stage 3: an unbounded stream, longer than the training window (stage3/inference.py)"
(cd stage3 && python inference.py --model_dir ../$DEMO/stage3/model --data_root ../$DEMO/footage \
  --index_file ../$DEMO/footage/index.json --groups 8 --num_inference_steps 4 --random_controls \
  --output ../$DEMO/stage3.mp4)

step "Stage 4: SCM distillation of the stream (stage4/train_text_to_video_scm.sh)"
(cd stage4 && bash train_text_to_video_scm.sh --config training/scm_config_tiny.py)

step "Stage 4: a few-step stream, one forward per group (stage4/inference.py)"
(cd stage4 && python inference.py --model_dir ../$DEMO/stage4/model --data_root ../$DEMO/footage \
  --index_file ../$DEMO/footage/index.json --groups 8 --random_controls --output ../$DEMO/stage4.mp4)

printf '\nDemo videos:\n'
for video in stage1 stage2 stage3 stage4; do printf '  %s\n' "$(realpath "$DEMO/$video.mp4")"; done
