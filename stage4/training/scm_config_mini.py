"""Stage 4 on the mini model: the learning proof (learning/README.md), sizes and paths changed only.
SCM distillation of the stage-3 stream into a 4-step student."""

from stage4.training.scm_config import args

args.pretrained_model_name_or_path = "../outputs/learning/models/stage3/model"
args.data_root = "../outputs/learning/footage/game"
args.index_file = "../outputs/learning/footage/game/index.json"
args.output_dir = "../outputs/learning/models/stage4"

args.height, args.width, args.fps = 96, 144, 10  # as the earlier stages
args.num_noise_groups, args.group_size = 4, 2  # stage 3's window: the student takes one step per band
args.frame_buckets = (1 + 4 * (2 + 4 * 2),)  # stage 3's window clip, 41 frames
# The teacher is judged at 20 steps (the stage-3 stream's default), 5 per band. Targets 5 teacher steps away are
# the teacher's own solutions at the band's boundary: no bootstrapping through the EMA target, which a run of
# 1,500 steps has no time for; each step costs 5 guided teacher forwards.
args.teacher_num_inference_steps = 20
args.skipping_interval = 5
# 16 windows a step, 2.7 TFLOP (the teacher's forwards more than the student's step); 1,500 steps took 405 s on
# one H100 (learning/RESULTS.md), 0.27 s a step against the 0.07 estimated: launches, not FLOPs, bound it.
args.train_batch_size = 16
args.max_train_steps = 1_500
args.learning_rate = 5e-5  # ten times the 2B recipe's: the mini student moves as far in a tenth of the steps
args.lr_warmup_steps = 50
args.checkpointing_steps = 750
args.validation_steps = 1_500  # one stream at the end
args.validation_groups = 16
args.dataloader_num_workers = 8
args.gradient_checkpointing = False
# The teacher's text guidance is its record's (args.guidance_scale unset): none for a stage-3 model trained
# without captions, as the mini one is, so the student learns the stream its teacher makes by default. A teacher
# written before its record named a guidance is distilled at CogVideoX's 6, which needs the captions that stay
# here (the stage's caption_p_zero).
