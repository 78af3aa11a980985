"""Stage 4 on the tiny model and the recorded CarRacing clips: the README's demo, CPU-sized."""

from stage4.training.scm_config import args

args.pretrained_model_name_or_path = "../outputs/demo/stage3/model"
args.data_root = "../outputs/demo/footage"
args.index_file = "../outputs/demo/footage/index.json"
args.output_dir = "../outputs/demo/stage4"

args.height, args.width, args.fps = 48, 64, 10  # as the earlier tiny stages
args.num_noise_groups, args.group_size = 2, 2  # stage 3's tiny window of 1 + 2*2 latent frames
args.frame_buckets = (25,)  # 1 + 4 * (2 + 2 * 2) video frames, as stage 3
args.teacher_num_inference_steps = 8  # 4 teacher steps per phase, stage 3's demo step count doubled
args.validation_num_inference_steps = 2  # = num_noise_groups: one forward per emitted group
args.learning_rate = 1e-3  # as stage 3's tiny run: a tiny model needs large steps to move in a few dozen
args.lr_warmup_steps = 0
args.max_train_steps = 30
args.checkpointing_steps = 15
args.validation_steps = 30
args.validation_groups = 6  # 48 frames: a stream longer than the 25-frame training clip
args.dataloader_num_workers = 0
args.gradient_checkpointing = False
args.cache_latents = True
