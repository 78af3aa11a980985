"""Stage 3 on the tiny model and the recorded CarRacing clips: the README's demo, CPU-sized."""

from stage3.training.sft_config import args

args.pretrained_model_name_or_path = "../outputs/demo/stage2/model"
args.data_root = "../outputs/demo/footage"
args.index_file = "../outputs/demo/footage/index.json"
args.output_dir = "../outputs/demo/stage3"

args.height, args.width = 48, 64  # as the earlier tiny stages
# Window of 1 + 2*2 latent frames: clips of 1 + 4 * (2 + 2 * 2) = 25 video frames (2 history latent frames first).
args.num_noise_groups, args.group_size = 2, 2
args.learning_rate = 1e-3
args.lr_warmup_steps = 0
args.max_train_steps = 40
args.checkpointing_steps = 20
args.validation_steps = 40
args.validation_groups = 6  # 48 frames: a stream longer than the 25-frame training clip
args.validation_num_inference_steps = 4
args.dataloader_num_workers = 0
args.gradient_checkpointing = False
args.cache_latents = True
