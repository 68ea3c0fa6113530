"""The LM head during the loss forward: its one home. Every hook litsft puts on the output embedding is here.

Shapes: B rows, T tokens, H hidden size, V vocabulary, N learned positions. The head ([H] -> [V]) dominates
compute and memory for small models with large vocabularies (GPT-2: V = 50,257). Like torchtune's
`SFTLoss.set_model_output`, the loss takes over the head, but from inside the model's own root `forward` (a hook
or an instance `forward` on the head module), so FSDP2 and DeepSpeed ZeRO-3 gather the root's parameters
(embeddings, tied head) as usual and DDP sees one ordinary forward:
- `head_loss_at` (training): the head returns the summed cross-entropy of the N learned positions, in chunks;
  the [B, T, V] and even the [N, V] logits never exist;
- `head_logits_at` (evaluation): the head runs on the [N, H] learned positions only;
- `capture_head_output`: what the head returned, for metrics computed from the same forward (`val/eos_acc`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from litsft.model.linear_cross_entropy import linear_cross_entropy_sum


def head_can_be_gathered(model) -> bool:
    """True when logits are just `lm_head(last hidden state)` (no soft-capping or scaling after the head)."""
    config = model.config
    return (
        model.get_output_embeddings() is not None
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) in (None, 1.0)
    )


@contextmanager
def head_logits_at(model, learned: torch.Tensor):
    """Make the LM head see only the hidden states of learned positions, inside the model's own forward.

    Done with a pre-hook on the output embedding rather than by calling `model.base_model` and the head
    ourselves, so the call goes through the model's root `forward`: FSDP2 and DeepSpeed ZeRO-3 gather the
    root's parameters (embeddings, tied head) there, and DDP sees one ordinary forward.
    """

    def select(module, args):
        hidden = args[0]  # [B, T, H]
        return (at_learned(hidden, learned),)  # [N, H]

    handle = model.get_output_embeddings().register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def head_loss_at(model, learned: torch.Tensor, targets: torch.Tensor):
    """Like `head_logits_at`, but the head returns the summed cross-entropy of the learned positions instead of
    their logits, computed in chunks (`litsft.model.linear_cross_entropy`): training never holds [N, V] logits."""
    head = model.get_output_embeddings()
    result: list[torch.Tensor] = []

    def forward(hidden: torch.Tensor) -> torch.Tensor:  # [B, T, H] -> [] fp32, passed on as the "logits"
        result.append(linear_cross_entropy_sum(at_learned(hidden, learned), head.weight, head.bias, targets))
        return result[-1]

    head.forward = forward  # the instance attribute shadows Linear.forward; module hooks still run around it
    try:
        yield result
    finally:
        del head.forward


def at_learned(x: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
    """`x` [B, T, ...] at the positions whose next token is learned -> [N, ...].

    `learned` is a boolean mask [B, T-1], or the flat indices [N] into [B, T] that litsft's collators compute on
    the host (`loss_index`): indexing with those needs no device-to-host sync, while a boolean mask does (its
    count decides the output's shape).
    """
    if learned.dtype == torch.bool:
        return x[:, :-1][learned]
    return x.flatten(0, 1)[learned]


@contextmanager
def capture_head_output(model) -> Iterator[list[torch.Tensor]]:
    """Collect what the LM head returns during the block: [N, V] (gathered head) or [B, T, V] (full)."""
    captured: list[torch.Tensor] = []

    def keep(module, args, output):
        captured.append(output.detach())

    handle = model.get_output_embeddings().register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()
