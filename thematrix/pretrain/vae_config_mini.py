"""VAE pretraining of the mini base model on the broad footage (learning/README.md, step 1).
Paths are relative to the repository root, where learning/gpu/*.sh run."""

from thematrix.pretrain.arguments import VaeArgs

args = VaeArgs()
args.pretrained_model_name_or_path = (
    "outputs/learning/models/base-mini-random"  # python -m thematrix.base_model --preset mini
)
args.data_root = "outputs/learning/footage/broad"  # CarRacing with random colours (learning/record_footage.py)
args.index_file = "outputs/learning/footage/broad/index.json"
args.output_dir = "outputs/learning/models/pretrain-vae"

args.fps = 10  # the recorder's rate; height and width are the VAE's own 96x144
args.clip_frames = 9  # 3 latent frames: the causal first frame and one whole decoder batch
# 8 crops x 9 frames x 96x144 = 1M pixels a step, 3.4 TFLOP forward + backward; 1,500 steps show each broad
# clip's frames about 4 times and take about 2 minutes on one H100 (learning/README.md).
args.train_batch_size = 8
args.max_train_steps = 1_500
args.dataloader_num_workers = 8  # decoding 8 crops a step keeps 8 of the GPU host's 16 cores busy
