"""Stage 2 on the tiny model and the recorded CarRacing clips: the README's demo, CPU-sized."""

from stage2.training.sft_config import args

args.pretrained_model_name_or_path = "../outputs/demo/stage1-fused"
args.data_root = "../outputs/demo/footage"
args.index_file = "../outputs/demo/footage/index.json"
args.output_dir = "../outputs/demo/stage2"

args.height, args.width, args.frame_buckets = (
    48,
    64,
    (9, 17),
)  # as stage 1's tiny run; fps and vocabulary: the model's and the footage's
args.learning_rate = 1e-3  # a tiny random model needs large steps to move in 60 of them
args.lr_warmup_steps = 0
args.max_train_steps = 60
args.checkpointing_steps = 20
args.validation_steps = 30
args.validation_num_frames = 17  # 5 latent frames: room for the control pattern to change
args.validation_num_inference_steps = 4
args.dataloader_num_workers = 0
args.gradient_checkpointing = False
args.cache_latents = True
