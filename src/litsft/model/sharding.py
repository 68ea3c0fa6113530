"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for any Hugging Face causal LM, and gathering it back.

Blocks are found from the model's own `_no_split_modules` (GPT2Block, LlamaDecoderLayer, ...), not
hard-coded. Each block is one FSDP unit (its parameters are all-gathered just for its forward/backward);
the root unit holds the rest (embeddings, final norm, the tied LM head).
"""

from __future__ import annotations

import torch
from torch import nn

from litsft.errors import LitSFTError


def block_classes(model: nn.Module) -> set[type[nn.Module]]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not found:
        raise LitSFTError(
            f"FSDP: cannot find the transformer blocks of {type(model).__name__} (its `_no_split_modules` is "
            f"{sorted(names) or 'empty'}). Use configs/strategy/ddp.yaml for this model."
        )
    return found


def apply_fsdp2(model: nn.Module, mesh, mixed_precision: torch.dtype | None = None) -> nn.Module:
    """Shard `model` in place over `mesh` (1-D data-parallel mesh): each block, then the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict = {"mesh": mesh}
    if mixed_precision is not None:
        # Compute in bf16/fp16 and reduce gradients in fp32: exact token-weighted sums across ranks.
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32)
    classes = tuple(block_classes(model))
    for module in model.modules():
        if isinstance(module, classes):
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The unsharded state dict on CPU, or None when the model is not sharded (save it as it is).

    Collective under FSDP2 and DeepSpeed ZeRO-3: every rank must call it (rank 0 writes the result).
    """
    if any(hasattr(p, "ds_id") for p in model.parameters()):  # DeepSpeed ZeRO-3 partitioned parameters
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
