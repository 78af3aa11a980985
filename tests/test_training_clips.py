"""The clips a run trains on, assembled by training/clips.py for the trainer: the latent cache is keyed by the
stage's own encoder fingerprint, so a stage that encodes clips otherwise never reads another stage's entries; a run
of more processes than batches is refused before it trains."""

from __future__ import annotations

import pytest
import torch

from stage1.train_text_to_video_lora import LoraTrainer
from stage1.training.arguments import LoraArgs
from thematrix.config import ConfigError
from thematrix.training.clips import training_batches


class OtherEncoding(LoraTrainer):
    """A stage that encodes clips its own way (stage 3 drops history latent frames) and says so in its fingerprint."""

    def cache_fingerprint(self):
        return dict(super().cache_fingerprint(), encoding="other")


def test_a_stages_fingerprint_keys_its_cache_entries(lora_args, tmp_path):
    cache = tmp_path / "cache"
    plain = LoraTrainer(lora_args(cache_dir=str(cache)))
    plain.setup()
    assert len(list(cache.glob("*.safetensors"))) == len(plain.dataset)
    other = OtherEncoding(lora_args(cache_dir=str(cache)))
    other.setup()
    assert len(list(cache.glob("*.safetensors"))) == 2 * len(plain.dataset)


def test_a_run_with_vae_tiling_does_not_reuse_latents_cached_without_it(lora_args, tmp_path):
    cache = tmp_path / "cache"
    whole_frames = LoraTrainer(lora_args(cache_dir=str(cache)))
    whole_frames.setup()
    LoraTrainer(lora_args(cache_dir=str(cache), enable_tiling=True)).setup()
    assert len(list(cache.glob("*.safetensors"))) == 2 * len(whole_frames.dataset)


class OneClip(torch.utils.data.Dataset):
    buckets = [17]  # its frame bucket, all BucketBatchSampler reads

    def __len__(self):
        return 1


def test_every_process_needs_a_batch():
    args = LoraArgs()
    training_batches(OneClip(), args, num_processes=1)
    with pytest.raises(
        ConfigError, match="1 clips make 1 batches of 1 clips of one bucket, and each of the 2 processes"
    ):
        training_batches(OneClip(), args, num_processes=2)


class NumberedClips(torch.utils.data.Dataset):
    """Clips that are their own index, so a batch shows which clips it holds."""

    buckets = [17] * 12

    def __len__(self):
        return len(self.buckets)

    def __getitem__(self, index):
        return {"index": index, "bucket": self.buckets[index]}


def epochs_of_batches(num_workers: int, epochs: int = 3) -> list[list[list[int]]]:
    args = LoraArgs()
    args.train_batch_size, args.dataloader_num_workers = 4, num_workers
    sampler, loader = training_batches(NumberedClips(), args, num_processes=1)
    seen = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        seen.append([batch["index"] for batch in loader])
    return seen


def test_persistent_workers_follow_each_epochs_order():
    in_process = epochs_of_batches(num_workers=0)
    assert in_process[0] != in_process[1]  # the epochs are shuffled apart, so a stale order would show
    assert epochs_of_batches(num_workers=2) == in_process
