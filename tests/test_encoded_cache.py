"""The latent/prompt cache: reused when nothing changed, re-encoded when anything that shapes it did."""

from __future__ import annotations

import os

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from tests.conftest import CLIP_FPS, CLIP_FRAMES, TEST_VOCABULARY, TINY_HEIGHT, TINY_WIDTH
from thematrix.data.dataset import VideoDataset
from thematrix.data.index import load_index
from thematrix.model_dir import VAE, load_components, save_model_dir
from thematrix.training.arguments import TrainingArgs
from thematrix.training.clips import encoder_fingerprint
from thematrix.training.encoded_cache import EncodedDataset, encode_dataset, entry_path, missing_entries


class CountingEncoders:
    """Stand-ins for the VAE and T5 that count their calls and return values tied to their input."""

    def __init__(self):
        self.videos = self.prompts = 0

    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        self.videos += 1
        return videos.mean(dim=(2, 3, 4), keepdim=True).expand(-1, -1, 2, 2, 2).contiguous()

    def encode_prompts(self, captions: list[str]) -> torch.Tensor:
        self.prompts += 1
        return torch.tensor([[float(len(caption))] for caption in captions])


@pytest.fixture
def dataset(tiny_dataset):
    samples, _ = load_index(tiny_dataset[1], tiny_dataset[0], TEST_VOCABULARY)
    return VideoDataset(
        samples,
        fps=CLIP_FPS,
        height=TINY_HEIGHT,
        width=TINY_WIDTH,
        frame_buckets=(CLIP_FRAMES,),
        temporal_compression=4,
        vocabulary=TEST_VOCABULARY,
    )


def test_cache_is_reused_until_an_input_changes(dataset, tmp_path):
    fingerprint = {"height": TINY_HEIGHT, "model": "a"}
    first = CountingEncoders()
    encode_dataset(dataset, tmp_path, first.encode_videos, first.encode_prompts, fingerprint)
    assert first.videos == len(dataset)
    again = CountingEncoders()
    encode_dataset(dataset, tmp_path, again.encode_videos, again.encode_prompts, fingerprint)
    assert again.videos == 0, "an unchanged clip must be read from the cache"

    other_model = CountingEncoders()
    encode_dataset(
        dataset, tmp_path, other_model.encode_videos, other_model.encode_prompts, dict(fingerprint, model="b")
    )
    assert other_model.videos == len(dataset), "another model must not reuse the first model's latents"

    item = EncodedDataset(dataset, tmp_path, fingerprint)[1]
    expected = first.encode_videos(dataset[1]["video"][None])[0]
    torch.testing.assert_close(item["latent_parameters"], expected)
    assert item["caption"] == dataset[1]["caption"] and torch.equal(item["controls"], dataset[1]["controls"])


def test_a_clip_changed_after_caching_is_never_served_stale(dataset, tmp_path):
    fingerprint = {"model": "a"}
    encoders = CountingEncoders()
    encode_dataset(dataset, tmp_path, encoders.encode_videos, encoders.encode_prompts, fingerprint)
    path = dataset.describe(0)["path"]
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        with pytest.raises(FileNotFoundError, match="changed after caching"):
            EncodedDataset(dataset, tmp_path, fingerprint)[0]
        encode_dataset(dataset, tmp_path, encoders.encode_videos, encoders.encode_prompts, fingerprint)
        assert encoders.videos == len(dataset) + 1  # only the changed clip was encoded again
        EncodedDataset(dataset, tmp_path, fingerprint)[0]
    finally:  # the clip is shared with other tests' caches
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_clips_decoded_by_workers_are_cached_under_their_own_keys(dataset, tmp_path):
    """Worker processes decode the missing clips ahead of the encoders: each entry still holds its own clip."""
    fingerprint = {"model": "a"}
    encoders = CountingEncoders()
    encode_dataset(dataset, tmp_path, encoders.encode_videos, encoders.encode_prompts, fingerprint)
    kept = 1
    for index in range(len(dataset)):
        if index != kept:
            entry_path(dataset, index, tmp_path, fingerprint)[0].unlink()
    again = CountingEncoders()
    encode_dataset(dataset, tmp_path, again.encode_videos, again.encode_prompts, fingerprint, num_workers=2)
    assert again.videos == len(dataset) - 1, "only the clips without an entry are encoded"
    for index in range(len(dataset)):
        item = EncodedDataset(dataset, tmp_path, fingerprint)[index]
        torch.testing.assert_close(item["latent_parameters"], again.encode_videos(dataset[index]["video"][None])[0])
        assert item["prompt_embeds"].item() == len(dataset[index]["caption"])


def test_a_later_stages_model_keys_the_cache_as_the_one_it_started_from_until_its_vae_changes(tiny_model_dir, tmp_path):
    """Stages share cache entries in one cache_dir: a stage's output model hard-links the frozen encoders, so its
    fingerprint is its input's; a VAE written anew is not the same VAE, whatever its path and config."""

    def fingerprint(model_dir):
        components = load_components(model_dir, torch.float32)
        return encoder_fingerprint(
            model_dir, TrainingArgs(), components["vae"], components["text_encoder"], torch.float32
        )

    transformer = CogVideoXTransformer3DModel.from_pretrained(tiny_model_dir, subfolder="transformer")
    later = save_model_dir(transformer, tiny_model_dir, tmp_path / "stage-output")
    assert fingerprint(later) == fingerprint(tiny_model_dir)

    vae_weights = next(path for path in (later / VAE).iterdir() if path.suffix == ".safetensors")
    data = vae_weights.read_bytes()
    vae_weights.unlink()  # a new file, the bytes unchanged: the fingerprint cannot tell without reading them
    vae_weights.write_bytes(data)
    assert fingerprint(later) != fingerprint(tiny_model_dir)


def test_latents_cached_without_vae_tiling_are_not_reused_with_it(tiny_model_dir, dataset, tmp_path):
    """args.enable_tiling makes the VAE encode each frame in blended tiles: other latents, so other entries."""
    components = load_components(tiny_model_dir, torch.float32)
    vae, text_encoder = components["vae"], components["text_encoder"]
    whole_frames = encoder_fingerprint(tiny_model_dir, TrainingArgs(), vae, text_encoder, torch.float32)
    encoders = CountingEncoders()
    encode_dataset(dataset, tmp_path, encoders.encode_videos, encoders.encode_prompts, whole_frames)
    assert missing_entries(dataset, tmp_path, whole_frames) == []

    vae.enable_tiling()
    tiled = encoder_fingerprint(tiny_model_dir, TrainingArgs(), vae, text_encoder, torch.float32)
    assert len(missing_entries(dataset, tmp_path, tiled)) == len(dataset)
    vae.enable_tiling(tile_sample_min_height=vae.tile_sample_min_height // 2)
    smaller_tiles = encoder_fingerprint(tiny_model_dir, TrainingArgs(), vae, text_encoder, torch.float32)
    assert smaller_tiles != tiled, "the tiles' size shapes the latents too"
