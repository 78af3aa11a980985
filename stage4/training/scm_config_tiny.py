"""Stage 4 on the tiny model and the recorded CarRacing clips: the README's demo, CPU-sized."""

from stage4.training.scm_config import args

args.pretrained_model_name_or_path = "../outputs/demo/stage3/model"
args.data_root = "../outputs/demo/footage"
args.index_file = "../outputs/demo/footage/index.json"
args.output_dir = "../outputs/demo/stage4"

args.height, args.width = 48, 64  # as the earlier tiny stages; the window, fps and vocabulary are stage 3's model's
args.teacher_num_inference_steps = 8  # 4 teacher steps per phase, stage 3's demo step count doubled
args.learning_rate = 1e-3  # as stage 3's tiny run: a tiny model needs large steps to move in a few dozen
args.lr_warmup_steps = 0
args.max_train_steps = 30
args.checkpointing_steps = 15
args.validation_steps = 30
args.validation_groups = 6  # 48 frames: a stream longer than the 25-frame training clip
args.dataloader_num_workers = 0
args.gradient_checkpointing = False
args.cache_latents = True
