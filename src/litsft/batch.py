"""The data -> model contract: what a training batch holds, and what each field means. Read this first.

Shapes: B rows (or S packed sequences), T tokens, N learned tokens in the micro-batch.

The collators (`litsft.data.collate`, `litsft.data.packing`) build a `Batch`; `SFTModule`
(`litsft.model.module`) consumes it; the loss (`litsft.model.loss`) computes the cross-entropy at the learned
positions only. Both sides import this module; data code never imports model code.

Labels are aligned with `input_ids`, not shifted: position t predicts `labels[:, t + 1]`, and a label is
`IGNORE_INDEX` where nothing is learned (prompt, padding, a packed row's first token). Labels never come from
`input_ids != pad_token_id` (GPT-2's pad is its EOS, and the EOS that ends a response is learned).

The right-padding invariant, stated once: litsft's collators put every row at the start of its sequence and the
padding after it. A causal model never attends from a real token to a later position, so the padding is invisible
to the real tokens without any attention mask, and the model may use its plain causal kernel (flash attention in
SDPA on a GPU). A batch that carries `loss_index` was built by litsft's collators and keeps that invariant; a
batch without it (from another loader) is treated conservatively: its `attention_mask` is passed to the model.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

import torch

IGNORE_INDEX = -100  # the label of a position that is not learned (PyTorch's cross-entropy ignore_index)


class Batch(TypedDict):
    """One micro-batch, as the collators build it and `SFTModule` reads it."""

    input_ids: torch.Tensor
    """[B, T] long: token ids, right-padded with the tokenizer's pad id."""
    attention_mask: torch.Tensor
    """[B, T] long: 1 on row tokens, 0 on padding. With right padding the model does not need it (see above)."""
    labels: torch.Tensor
    """[B, T] long: the token to learn at each position, `IGNORE_INDEX` elsewhere; unshifted."""
    loss_index: NotRequired[torch.Tensor]
    """[N] long: `learned_positions(labels)`, found on the host; its presence marks a right-padded batch."""
    step_tokens: NotRequired[torch.Tensor]
    """[] float: learned tokens of the whole optimizer step (all micro-batches, all ranks): the loss's divisor."""
    position_ids: NotRequired[torch.Tensor]
    """[S, T] long, packed batches only: positions restart at 0 for each packed row (the attention mask is then
    block-diagonal causal, built on the device from these)."""


def learned_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices into [B, T] of the positions t whose next token labels[:, t + 1] is learned: [N] long.

    Computed in the collator (host side), so the loss can gather these positions on the device without the
    device-to-host sync that indexing with a boolean mask costs (its count decides the output's shape).
    """
    learned = labels[:, 1:] != IGNORE_INDEX  # [B, T-1]
    b, t = learned.nonzero(as_tuple=True)
    return b * labels.shape[1] + t


def is_right_padded(batch: Batch) -> bool:
    """True when the batch keeps the right-padding invariant (built by litsft's collators): no mask needed."""
    return "loss_index" in batch
