"""The clips a run trains on, assembled by training/clips.py for the trainer: the latent cache is keyed by the
stage's own encoder fingerprint, so a stage that encodes clips otherwise never reads another stage's entries."""

from __future__ import annotations

from stage1.train_text_to_video_lora import LoraTrainer


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
