"""What each training mode does with the weights, and what it refuses, checked before a run trains.

accelerate runs the trainer in one of three modes, chosen at launch (``ACCELERATE_CONFIG``, see
thematrix/accelerate_configs/README.md):

- data parallel (plain DDP, or one process): every process holds the whole model, its gradients and its
  optimizer state;
- FSDP (version 2, torch's ``fully_shard``): the trained weights, their gradients and their optimizer
  state are split over the processes, each transformer block gathered for its forward and backward only.
  It needs every transformer weight to train (stage 3, stage 4's full student): a LoRA or partly frozen
  model fits one GPU with data parallel or ZeRO-2;
- DeepSpeed ZeRO-2: the optimizer state, with the float32 master weights, and the gradients are split;
  the bf16 weights are whole on every process.

In every mode the frozen text encoder and VAE, stage 4's frozen teacher (in the compute dtype) and stage
4's EMA target (float32, updated from the whole float32 weights once per optimizer step) are whole on
every process: the teacher is frozen, so it has no gradients or optimizer state to split.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy

from thematrix.acceleration import check_installed
from thematrix.config import ConfigError
from thematrix.training.arguments import TrainingArgs

FSDP_VERSION = 2  # torch's fully_shard: runs on any device, checkpoints reshard to any process count
# Gradients are averaged over the processes in float32 under FSDP, as data parallel averages them.
MIXED_PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
ZERO_STAGE = 2  # parameters whole on every process: the EMA target, validation and saving read them directly
AUTO = "auto"  # a DeepSpeed setting accelerate fills in from the training script


class TrainingMode(enum.Enum):
    DATA_PARALLEL = "data parallel"
    FSDP = "FSDP"
    DEEPSPEED = "DeepSpeed ZeRO-2"


def training_mode(accelerator: Accelerator) -> TrainingMode:
    if accelerator.distributed_type == DistributedType.FSDP:
        return TrainingMode.FSDP
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return TrainingMode.DEEPSPEED
    return TrainingMode.DATA_PARALLEL


def configure_training_mode(accelerator: Accelerator, args: TrainingArgs) -> None:
    """Refuse, before any weight loads, an accelerate configuration or setting this trainer cannot run; give
    DeepSpeed the per-process batch, which it cannot read from a loader of batch-sampled clips."""
    mode = training_mode(accelerator)
    if args.use_8bit_adam:
        check_8bit_adam(mode)
    if mode is TrainingMode.FSDP:
        plugin = accelerator.state.fsdp_plugin
        if plugin.fsdp_version != FSDP_VERSION:
            raise ConfigError(
                f"the accelerate config sets fsdp_version: {plugin.fsdp_version}; the trainer runs FSDP version "
                f"{FSDP_VERSION} (fully_shard): set fsdp_version: {FSDP_VERSION}, as accelerate_configs/fsdp.yaml does"
            )
        compute_dtype = MIXED_PRECISION_DTYPES.get(accelerator.mixed_precision)
        if compute_dtype is not None:  # accelerate's policy would average the gradients in the compute dtype
            plugin.mixed_precision_policy = MixedPrecisionPolicy(
                param_dtype=compute_dtype, reduce_dtype=torch.float32, output_dtype=compute_dtype
            )
    if mode is not TrainingMode.DEEPSPEED:
        return
    plugin = accelerator.state.deepspeed_plugin
    if plugin.zero_stage != ZERO_STAGE:
        raise ConfigError(
            f"the accelerate config sets zero_stage: {plugin.zero_stage}; the trainer runs ZeRO stage {ZERO_STAGE} "
            "(stage 3 splits the weights, which stage 4's EMA target, validation and saving read whole): set "
            f"zero_stage: {ZERO_STAGE}, or use ACCELERATE_CONFIG=fsdp to split the weights too"
        )
    clipping = plugin.deepspeed_config.get("gradient_clipping")
    if clipping == AUTO:  # a value for the training script to fill in
        plugin.deepspeed_config["gradient_clipping"] = clipping = args.max_grad_norm
    if clipping != args.max_grad_norm:
        raise ConfigError(
            f"the DeepSpeed config clips gradients at {clipping} (gradient_clipping), args.max_grad_norm is "
            f"{args.max_grad_norm}: DeepSpeed clips inside its own step, so set gradient_clipping: {args.max_grad_norm} "
            "in the accelerate config (accelerate_configs/deepspeed_zero2.yaml), or args.max_grad_norm to match"
        )
    if args.max_nonfinite_steps:
        raise ConfigError(
            f"args.max_nonfinite_steps = {args.max_nonfinite_steps}: DeepSpeed applies each update inside its backward "
            "pass, before the trainer sees the gradient norm, so it cannot skip a step; set args.max_nonfinite_steps = 0, "
            "or launch without ACCELERATE_CONFIG (data parallel) or with ACCELERATE_CONFIG=fsdp"
        )
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.train_batch_size


def check_8bit_adam(mode: TrainingMode) -> None:
    """args.use_8bit_adam keeps AdamW's moments in bitsandbytes' 8-bit state, whole on every process: data parallel."""
    if mode is not TrainingMode.DATA_PARALLEL:
        raise ConfigError(
            f"args.use_8bit_adam runs under data parallel only, and this launch runs {mode.value}, which splits the "
            "optimizer state over the processes already: set args.use_8bit_adam = False, or launch without "
            "ACCELERATE_CONFIG"
        )
    check_installed("bitsandbytes", "adam8bit", "args.use_8bit_adam", "keeps AdamW's moments")


def check_model_for_mode(accelerator: Accelerator, transformer: torch.nn.Module) -> None:
    """FSDP splits every weight of the transformer alike: refuse a model with frozen weights under it."""
    if training_mode(accelerator) is not TrainingMode.FSDP:
        return
    frozen = [name for name, param in transformer.named_parameters() if not param.requires_grad]
    if frozen:
        raise ConfigError(
            f"FSDP trains models whose every weight trains (stage 3, stage 4 with args.student = 'full'); this one "
            f"keeps {len(frozen)} weights frozen ({', '.join(frozen[:3])}, ...). A LoRA or Interactive-Module run "
            "fits one GPU: launch it without ACCELERATE_CONFIG (data parallel) or with ACCELERATE_CONFIG=deepspeed_zero2"
        )


def full_trainable_weights(accelerator: Accelerator, model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole float32 weight) of each trainable parameter of the prepared ``model``, on every process.

    Under FSDP and DeepSpeed each weight is gathered from the processes' shards, one at a time (a collective:
    every process iterates to the end, in the same order); under data parallel it is the parameter itself.
    """
    mode = training_mode(accelerator)
    unwrapped = accelerator.unwrap_model(model)
    if mode is TrainingMode.FSDP:
        # A forward without a backward (validation) leaves the root module's weights gathered: split them again.
        for module in unwrapped.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
    for name, param in unwrapped.named_parameters():
        if not param.requires_grad:
            continue
        if mode is TrainingMode.FSDP:
            yield name, param.full_tensor()
        elif mode is TrainingMode.DEEPSPEED:
            from deepspeed.utils import safe_get_full_fp32_param  # installed with the DeepSpeed mode only

            yield name, safe_get_full_fp32_param(param)
        else:
            yield name, param.detach()


def unsharded_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module | None:
    """The trained model as a plain module with whole float32 trained weights on the main process (None on the
    others), to save. A collective under FSDP and DeepSpeed: every process calls it.

    FSDP: a copy of the model's own class built on the meta device, given the gathered weights and the module's
    buffers (FSDP splits no buffer). DeepSpeed: the module itself, its bf16 trained weights replaced by the
    float32 master weights.
    """
    mode = training_mode(accelerator)
    unwrapped = accelerator.unwrap_model(model)
    if mode is TrainingMode.DATA_PARALLEL:
        return unwrapped if accelerator.is_main_process else None
    if mode is TrainingMode.DEEPSPEED:
        parameters = dict(unwrapped.named_parameters())
        for name, weight in full_trainable_weights(accelerator, model):
            parameters[name].data = weight
        return unwrapped if accelerator.is_main_process else None
    weights = {}
    for name, weight in full_trainable_weights(accelerator, model):
        if accelerator.is_main_process:
            weights[name] = weight.cpu()
    if not accelerator.is_main_process:
        return None
    # fully_shard gives the module a class of its own, derived from FSDPModule and the model's class.
    model_class = next(cls for cls in type(unwrapped).__mro__ if not issubclass(cls, FSDPModule))
    with torch.device("meta"):
        copy = model_class.from_config(unwrapped.config)
    copy.load_state_dict(weights, strict=False, assign=True)
    for name, buffer in unwrapped.named_buffers():
        owner, _, leaf = name.rpartition(".")
        copy.get_submodule(owner)._buffers[leaf] = buffer.cpu()
    return copy
