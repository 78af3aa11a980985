"""Text-to-video pretraining of the mini base model's transformer on the broad footage (learning/README.md,
step 2). Paths are relative to the repository root, where learning/gpu/*.sh run."""

from thematrix.pretrain.arguments import PretrainArgs

args = PretrainArgs()
args.pretrained_model_name_or_path = "outputs/learning/models/pretrain-vae/model"  # thematrix.pretrain.vae's output
args.data_root = "outputs/learning/footage/broad"
args.index_file = "outputs/learning/footage/broad/index.json"
args.output_dir = "outputs/learning/models/pretrain"  # the base model is <output_dir>/model

args.height, args.width = 96, 144  # the mini VAE's native size
args.fps = 10  # the recorder's rate
args.frame_buckets = (41,)  # 11 latent frames: the clip length of every later stage (stage 3's window with history)
# 32 clips x (594 video + 226 text tokens) a step, 1.0 TFLOP forward + backward; 5,000 steps take about
# 3 minutes on one H100 (learning/README.md) and show each broad clip about 220 times, each time at another
# noise level and latent draw.
args.train_batch_size = 32
args.max_train_steps = 5_000
args.learning_rate = 3e-4
args.lr_scheduler = "cosine"  # decays to 0 by the last step: the best weights of a short run are its last
args.lr_warmup_steps = 200
args.checkpointing_steps = 1_000
args.validation_steps = 5_000  # one video at the end, to look at; evaluation measures the model
args.validation_num_frames = 41
args.dataloader_num_workers = 8
args.gradient_checkpointing = False  # 9.7M parameters: activations fit, recomputing them would cost a third
args.cache_latents = True
