"""Stage 1: LoRA fine-tuning of CogVideoX-2B on game footage. Check the paths, then run
`bash train_text_to_video_lora.sh`. Paths are relative to stage1/. Every setting and its default is
listed in thematrix/training/arguments.py and stage1/training/arguments.py.

On a GPU with FP8 tensor cores (H100, H200), four switches, off by default, together make a step at 2B about 1.47x
as fast as stock diffusers' LoRA step at no more memory (README, "Training has five switches"; bench/RESULTS.md):
compile_blocks, checkpoint_keeps_attention, fp8_training and offload_checkpoints, each set to True.
"""

from stage1.training.arguments import LoraArgs

args = LoraArgs()
# The original model: its Hugging Face id (downloaded once into the hub cache) or a local diffusers directory.
args.pretrained_model_name_or_path = "THUDM/CogVideoX-2b"
args.data_root = "../footage"  # folder of the clips and their vocabulary.json (README: recorded at the repository root)
args.index_file = "../footage/index.json"  # JSON index of the clips (data/README.md)
args.output_dir = "../outputs/stage1-lora"

# The reference recipe: 480x720 clips of 17/33/65 frames, rank 256, lr 1e-5, bf16 (the defaults).
# 1 clip x 1 accumulation x N GPUs per optimizer step; raise gradient_accumulation_steps for a larger batch.
args.train_batch_size = 1
args.max_train_steps = 10_000
args.checkpointing_steps = 500
args.validation_steps = 500
