"""Stage 1 on the mini base model: the learning proof (learning/README.md), sizes and paths changed only.
LoRA fine-tuning of the model pretrained on random-colour CarRacing onto the standard game's footage."""

from stage1.training.lora_config import args

args.pretrained_model_name_or_path = "../outputs/learning/models/pretrain/model"  # thematrix.pretrain's output
args.data_root = "../outputs/learning/footage/game"  # standard CarRacing (learning/record_footage.py)
args.index_file = "../outputs/learning/footage/game/index.json"
args.output_dir = "../outputs/learning/models/stage1-lora"

args.height, args.width = 96, 144  # the mini model's native size
args.fps = 10  # the recorder's rate
args.frame_buckets = (41,)  # 11 latent frames, as pretraining
args.rank, args.lora_alpha = 32, 32.0  # 1/8 of the 256-wide transformer, as 256 is about 1/8 of CogVideoX-2B's 1920
# 32 clips a step, 0.8 TFLOP; 800 steps (about 85 passes over the 300 clips) take about 30 s on one H100.
args.train_batch_size = 32
args.max_train_steps = 800
args.learning_rate = 5e-4  # adapters of a 9.7M model move colours in hundreds of steps, not thousands
args.lr_warmup_steps = 50
args.checkpointing_steps = 400
args.validation_steps = 800  # one video at the end, to look at; evaluation measures the model
args.validation_num_frames = 41
args.dataloader_num_workers = 8
args.gradient_checkpointing = False  # a 9.7M model's activations fit
args.cache_latents = True
