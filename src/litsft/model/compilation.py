"""`--model.torch_compile`: torch.compile the transformer blocks, one at a time ("regional compilation").

Why blocks and not the whole model: all blocks share one compiled graph (their weights are graph inputs), so
compiling takes seconds instead of minutes; the parts around them (embeddings, the LM head at the learned
positions, the loss) keep their data-dependent shapes outside the graph; hooks on the head (litsft's
gathered head, val/eos_acc) still work; and the parameter names, hence checkpoints and exports, do not change
(`nn.Module.compile` compiles in place, with no `_orig_mod.` prefix). Sequence lengths vary between batches:
after the first change of shape torch recompiles once with a dynamic length.
"""

from __future__ import annotations

from torch import nn


def transformer_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The model's list of blocks (GPT-2 `transformer.h`, Llama `model.layers`, ...): the ModuleList with one
    entry per layer."""
    layers = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == layers:
            return module
    return None


def compile_blocks(model: nn.Module, **compile_kwargs) -> int:
    """Compile each block in place; without a recognisable block list, compile the base model. Returns the number
    of modules compiled."""
    blocks = transformer_blocks(model)
    targets = list(blocks) if blocks is not None else [model.base_model]
    for module in targets:
        module.compile(**compile_kwargs)
    return len(targets)
