"""Stage 2: the Interactive Module. Point pretrained_model_name_or_path at stage 1's fused model, then run
`bash train_text_to_video_sft.sh`. Paths are relative to stage2/. All settings and defaults:
thematrix/training/arguments.py and stage2/training/arguments.py.
"""

from stage2.training.arguments import SftArgs

args = SftArgs()
args.pretrained_model_name_or_path = "../outputs/stage1-fused"  # output_dir of stage1/fuse_lora_weights.py
args.data_root = "../footage"  # as stage 1's
args.index_file = "../footage/index.json"
args.output_dir = "../outputs/stage2"  # the trained model is written to <output_dir>/model

# The game's keys and their phrases come with the footage (DATA_ROOT/vocabulary.json, data/README.md); footage
# without one sets them here: args.control_tokens = ("W", ...); args.control_phrases = ("The player walks forward.", ...)
args.control_p_zero = 0.1  # the reference's rate of dropped controls
args.max_train_steps = 10_000
