"""Stage 2 on the mini model: the learning proof (learning/README.md), sizes and paths changed only.
The Interactive Module trained on the fused stage-1 model with the standard game's controls."""

from stage2.training.sft_config import args

args.pretrained_model_name_or_path = "../outputs/learning/models/stage1-fused"  # stage1/fuse_lora_weights.py
args.data_root = "../outputs/learning/footage/game"
args.index_file = "../outputs/learning/footage/game/index.json"
args.output_dir = "../outputs/learning/models/stage2"

args.height, args.width, args.fps, args.frame_buckets = 96, 144, 10, (41,)  # as stage 1
# 32 clips a step, 1.1 TFLOP; 2,500 steps take about 1.5 minutes on one H100 (learning/README.md).
args.train_batch_size = 32
args.max_train_steps = 2_500
args.learning_rate = 1e-3  # the control blocks start at zero and are the only weights that train
args.lr_warmup_steps = 100
args.checkpointing_steps = 1_000
args.validation_steps = 2_500  # one video at the end
args.validation_num_frames = 41
args.dataloader_num_workers = 8
args.gradient_checkpointing = False
args.cache_latents = True
