"""Stage 3: Swin-DPM, full-parameter fine-tuning on windows of staggered noise groups. Point
pretrained_model_name_or_path at stage 2's model, then run `bash train_text_to_video_sft.sh`.
Paths are relative to stage3/. Settings and defaults: thematrix/training/arguments.py,
stage2/training/arguments.py and stage3/training/arguments.py.

Memory for a window of 17 latent frames (73-frame clips) at 480x720, batch 1, on one 80 GB GPU (see bench/RESULTS.md for measurements):
- full fine-tuning keeps float32 weights, gradients and two Adam moments: 16 bytes per parameter,
  about 36 GB for the 2.24B parameters of the interactive transformer (use_8bit_adam = True: 2 bytes of
  moments a parameter instead of 8);
- gradient_checkpointing = True recomputes activations in backward: without it the activations of
  30 blocks over 23k tokens do not fit; it costs about a third more time per step;
- cache_latents = True frees the T5 encoder's 9.5 GB for the run (captions are encoded once).
"""

from stage3.training.arguments import SwinArgs

args = SwinArgs()
args.pretrained_model_name_or_path = "../outputs/stage2/model"  # <output_dir>/model of stage 2
args.data_root = "../footage"  # as stage 1's
args.index_file = "../footage/index.json"
args.output_dir = "../outputs/stage3"

args.gradient_checkpointing = True
args.cache_latents = True
args.max_train_steps = 10_000
