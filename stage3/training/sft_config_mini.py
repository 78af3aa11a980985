"""Stage 3 on the mini model: the learning proof (learning/README.md), sizes and paths changed only.
Swin-DPM full fine-tuning of the stage-2 model, on windows of 4 noise groups of 2 latent frames."""

from stage3.training.sft_config import args

args.pretrained_model_name_or_path = "../outputs/learning/models/stage2/model"
args.data_root = "../outputs/learning/footage/game"
args.index_file = "../outputs/learning/footage/game/index.json"
args.output_dir = "../outputs/learning/models/stage3"

args.height, args.width, args.fps = 96, 144, 10  # as the earlier stages
# G = 4 bands, as the recipe: stage 4's student then takes 4 steps, one per band. W = 2, the smallest group the
# streaming decoder emits whole (its frame batch): a window of 1 + 4 * 2 = 9 latent frames costs half the
# recipe's W = 4 per forward, and a key reaches the screen 4 groups (32 frames, 3.2 s) after it is pressed.
args.num_noise_groups, args.group_size = 4, 2
# A window clip is 1 + c * (H + G * W) frames: c = 4 (the VAE's time compression), H = 2 history latent frames
# encoded before the condition frame and dropped, G * W = 8.
args.frame_buckets = (1 + 4 * (2 + 4 * 2),)
# 32 windows a step, 0.9 TFLOP; 3,000 steps take about 2 minutes on one H100 (learning/README.md).
args.train_batch_size = 32
args.max_train_steps = 1_500  # 4 minutes on one H100; the stream met both stage-3 targets (learning/RESULTS.md)
args.learning_rate = 1e-4  # every weight trains: a tenth of the pretraining rate
args.lr_warmup_steps = 100
args.checkpointing_steps = 500
args.validation_steps = 1_500  # one stream at the end
args.validation_groups = 16  # 128 frames, three times the training window
args.dataloader_num_workers = 8
args.gradient_checkpointing = False  # 9.7M parameters: activations fit
# As stage 2: the recorder's captions name the motions; without them the controls alone carry the motion.
args.caption_p_zero = 1.0
