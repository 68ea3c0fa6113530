"""The masked SFT loss, computed at learned positions only.

Shapes: B rows, T tokens, H hidden size, V vocabulary, N learned tokens in the micro-batch.
The LM head ([H] -> [V]) dominates compute and memory for small models with large vocabularies (GPT-2:
V = 50,257). Prompt and padding positions have no label, so we gather the N learned positions' hidden
states first and run the head and the cross-entropy on [N, H] instead of [B, T, H]: about half the head's
FLOPs on Alpaca, and the full [B, T, V] logits tensor never exists.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from litsft.batch import IGNORE_INDEX
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
def _head_only_at(model, learned: torch.Tensor):
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
def _head_loss_at(model, learned: torch.Tensor, targets: torch.Tensor):
    """Like `_head_only_at`, but the head returns the summed cross-entropy of the learned positions instead of
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


def masked_ce_sum(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    gather_head: bool = True,
    position_ids: torch.Tensor | None = None,
    loss_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of token cross-entropies over learned positions (fp32) and their count.

    `labels` [B, T] are aligned with `input_ids` (not shifted): position t predicts labels[:, t + 1].
    `attention_mask` is [B, T] (padding), [B, 1, T, T] (packed rows) or None (right-padded: causal attention
    never reaches the padding). `position_ids` [B, T] restart per packed row. `loss_index` [N]: see `at_learned`.
    Returns (loss_sum [] fp32, num_tokens [] long). Dividing is left to the caller, who knows the right
    denominator (all learned tokens of the optimizer step).
    """
    if loss_index is None:
        learned = labels[:, 1:] != IGNORE_INDEX  # [B, T-1]
        targets = labels[:, 1:][learned]  # [N]
        count = learned.sum()
    else:
        learned = loss_index  # [N] flat positions b * T + t; each predicts the token at b * T + t + 1
        targets = labels.flatten()[loss_index + 1]  # [N]
        count = torch.full((), loss_index.numel(), dtype=torch.long, device=labels.device)
    # use_cache=False: no key/value cache is built for a training forward (transformers builds one by default).
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if position_ids is not None:
        inputs["position_ids"] = position_ids
    if gather_head and torch.is_grad_enabled() and isinstance(model.get_output_embeddings(), torch.nn.Linear):
        # Training: head and loss fused, chunk by chunk, inside the model's forward.
        with _head_loss_at(model, learned, targets) as loss_sum:
            model(**inputs, logits_to_keep=0)
        return loss_sum[0], count
    if gather_head:
        with _head_only_at(model, learned):
            # logits_to_keep=0 keeps every position, so the hook sees the full [B, T, H] it selects from.
            logits = model(**inputs, logits_to_keep=0).logits  # [N, V]
    else:
        logits = at_learned(model(**inputs).logits, learned)  # [N, V]
    loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
    return loss_sum, count
