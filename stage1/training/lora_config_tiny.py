"""Stage 1 on the tiny model and the recorded CarRacing clips: the README's demo, CPU-sized. The frame rate is
the footage's (unset); another game's footage needs only other paths."""

from stage1.training.lora_config import args

args.pretrained_model_name_or_path = "../outputs/demo/base-tiny"  # python -m thematrix.base_model --preset tiny
args.data_root = "../outputs/demo/footage"  # python data/record_carracing.py
args.index_file = "../outputs/demo/footage/index.json"
args.output_dir = "../outputs/demo/stage1-lora"

args.height, args.width = 48, 64  # the tiny VAE's native size
args.frame_buckets = (9, 17)  # 3 or 5 latent frames
args.rank, args.lora_alpha = 8, 8.0  # the tiny transformer is 16 wide
args.learning_rate = 1e-3  # a tiny random model needs large steps to move in 60 of them
args.lr_warmup_steps = 0
args.max_train_steps = 60
args.checkpointing_steps = 20
args.validation_steps = 30
args.validation_num_frames = 9
args.validation_num_inference_steps = 4
args.dataloader_num_workers = 0  # two CPU cores: loading in the main process is fastest
args.gradient_checkpointing = False
args.cache_latents = True
