"""Stage 4: SCM, consistency distillation of the stage-3 model into a few-step streaming student. Point
pretrained_model_name_or_path at stage 3's model, then run `bash train_text_to_video_scm.sh`.
Paths are relative to stage4/. Settings and defaults: thematrix/training/arguments.py,
stage2/training/arguments.py, stage3/training/arguments.py and stage4/training/arguments.py.

Measured on windows of 17 latent frames at 480x720, batch 1, bf16, on one H100 (random 2B weights, teacher N = 40, k = 1):
- student = "full": 3.5 s a step (4.0 s with distill_guidance when the guided teacher ran two forwards),
  49 GiB peak: stage 3's full fine-tuning plus the bf16 teacher (4 GB) and the float32 EMA target (8 GB);
- student = "lora" (rank 64) with distill_guidance: 4.0 s, 15.6 GiB; the target shares the frozen weights.
The guided teacher now runs the three predictions of stage 2's guidance formula at control_guidance_scale
= 1 (two at control_guidance_scale = guidance_scale), so distill_guidance steps take longer than measured.
"""

from stage4.training.arguments import ScmArgs

args = ScmArgs()
args.pretrained_model_name_or_path = "../outputs/stage3/model"  # <output_dir>/model of stage 3
args.data_root = "../footage"  # as stage 1's
args.index_file = "../footage/index.json"
args.output_dir = "../outputs/stage4"

args.gradient_checkpointing = True  # as stage 3: the full student's activations do not fit otherwise
args.cache_latents = True  # frees the T5 encoder's memory for the teacher and the target
args.max_train_steps = 10_000
