"""args.use_8bit_adam: AdamW's moments in 8 bits (bitsandbytes' AdamW8bit), on stage 3's full fine-tuning of the
tiny model; refused before any weight loads where it cannot run."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from stage1.training.arguments import LoraArgs
from stage3.train_text_to_video_sft import SwinTrainer
from tests.conftest import whole_and_resumed
from tests.test_stage3_train import stage3_args
from thematrix.config import ConfigError
from thematrix.training.sharding import configure_training_mode
from thematrix.training.trainer import adamw

bitsandbytes_optim = pytest.importorskip("bitsandbytes.optim")

STEPS = 4
WIDTH = 128  # a 128 x 128 weight: 16,384 values, enough for 8-bit moments (the tiny model's tensors are smaller)


def moment_bytes(optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """(bytes of the AdamW moments held in 8 bits, bytes of those held in float32) over every trained weight."""
    eight_bit = full = 0
    for state in optimizer.state.values():
        if "exp_avg" in state:  # torch's AdamW
            full += sum(state[name].numel() * state[name].element_size() for name in ("exp_avg", "exp_avg_sq"))
            continue
        for moment, scales, code in (("state1", "absmax1", "qmap1"), ("state2", "absmax2", "qmap2")):
            if state[moment].dtype == torch.uint8:
                eight_bit += sum(state[name].numel() * state[name].element_size() for name in (moment, scales, code))
            else:
                full += state[moment].numel() * state[moment].element_size()
    return eight_bit, full


def regression(use_8bit_adam: bool) -> dict:
    """A two-layer model to fit to a fixed random map, with ``adamw`` as the trainer builds it, through accelerate."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.GELU(), torch.nn.Linear(WIDTH, 8))
    initial = torch.cat([weight.detach().flatten() for weight in model.parameters()])
    args = LoraArgs()
    args.use_8bit_adam, args.learning_rate = use_8bit_adam, 1e-3
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, adamw(list(model.parameters()), args))
    data = torch.randn(64, WIDTH), torch.randn(64, 8)
    return {"model": model, "optimizer": optimizer, "accelerator": accelerator, "data": data, "initial": initial}


def fit(run: dict, steps: int) -> list[float]:
    inputs, targets = run["data"]
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(run["model"](inputs), targets)
        run["accelerator"].backward(loss)
        run["optimizer"].step()
        run["optimizer"].zero_grad()
        losses.append(loss.item())
    return losses


def moved(run: dict) -> torch.Tensor:
    return torch.cat([weight.detach().flatten() for weight in run["model"].parameters()]) - run["initial"]


def test_8bit_moments_take_a_quarter_of_float32s_and_follow_float32_adam():
    run, full_run = regression(use_8bit_adam=True), regression(use_8bit_adam=False)
    losses, full_losses = fit(run, 20), fit(full_run, 20)
    assert losses[-1] < 0.5 * losses[0]
    eight_bit, full = moment_bytes(run["optimizer"].optimizer)
    # One byte a value for each moment, a float32 scale a block of 256 values and the 256 float32 codes of its
    # quantization map, for the large weight; the biases and the small second layer keep float32 moments.
    assert eight_bit == 2 * (WIDTH * WIDTH * (1 + 4 / 256) + 256 * 4)
    assert full == 2 * 4 * (WIDTH + WIDTH * 8 + 8)
    all_weights = sum(weight.numel() for weight in full_run["model"].parameters())
    assert moment_bytes(full_run["optimizer"].optimizer) == (0, 2 * 4 * all_weights)
    cosine = torch.nn.functional.cosine_similarity(moved(run), moved(full_run), dim=0)
    assert cosine > 0.99, cosine
    assert abs(losses[-1] - full_losses[-1]) < 0.02 * full_losses[-1]


def test_8bit_moments_are_checkpointed_and_restored_exactly(tmp_path):
    """accelerate's checkpoint holds the 8-bit moments; loaded into a fresh run, the next steps equal the
    uninterrupted run's."""
    whole = regression(use_8bit_adam=True)
    fit(whole, 3)
    whole["accelerator"].save_state(str(tmp_path / "checkpoint"))
    later = fit(whole, 3)
    resumed = regression(use_8bit_adam=True)
    resumed["accelerator"].load_state(str(tmp_path / "checkpoint"))
    assert moment_bytes(resumed["optimizer"].optimizer)[0] > 0
    assert fit(resumed, 3) == later
    for weight, again in zip(whole["model"].parameters(), resumed["model"].parameters(), strict=True):
        assert torch.equal(weight, again)


def test_a_killed_stage_3_run_with_8bit_adam_resumes_exactly(tiny_model_dir, tiny_dataset, tmp_path):
    settings = dict(max_train_steps=STEPS, checkpointing_steps=2, use_8bit_adam=True)
    whole, resumed = whole_and_resumed(
        SwinTrainer,
        lambda run: stage3_args(tiny_model_dir, tiny_dataset, tmp_path / run, **settings),
        kill_at=STEPS,
        killed_leaves=["checkpoint-2"],
    )
    assert isinstance(whole.optimizer.optimizer, bitsandbytes_optim.AdamW8bit)
    assert resumed.global_step == STEPS
    for (name, weight), (_, again) in zip(
        whole.transformer.named_parameters(), resumed.transformer.named_parameters(), strict=True
    ):
        assert torch.equal(weight, again), name


def launched(distributed_type):
    return SimpleNamespace(distributed_type=distributed_type, mixed_precision="bf16", state=SimpleNamespace())


@pytest.mark.parametrize("distributed_type", [DistributedType.FSDP, DistributedType.DEEPSPEED])
def test_8bit_adam_is_refused_where_the_optimizer_state_is_split(distributed_type):
    args = LoraArgs()
    args.use_8bit_adam = True
    with pytest.raises(ConfigError, match="args.use_8bit_adam runs under data parallel only.*set args.use_8bit_adam"):
        configure_training_mode(launched(distributed_type), args)


def test_8bit_adam_is_refused_without_bitsandbytes(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "bitsandbytes" else find_spec(name)
    )
    args = LoraArgs()
    args.use_8bit_adam = True
    with pytest.raises(
        ConfigError, match=r"bitsandbytes, which is not installed: pip install bitsandbytes \(or .*adam8bit"
    ):
        configure_training_mode(launched(DistributedType.NO), args)
