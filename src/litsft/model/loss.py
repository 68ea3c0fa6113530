"""The masked SFT loss, computed at learned positions only.

Shapes: B rows, T tokens, H hidden size, V vocabulary, N learned tokens in the micro-batch.
The LM head ([H] -> [V]) dominates compute and memory for small models with large vocabularies (GPT-2:
V = 50,257). Prompt and padding positions have no label, so we gather the N learned positions' hidden
states first and run the head and the cross-entropy on [N, H] instead of [B, T, H]: about half the head's
FLOPs on Alpaca, and the full [B, T, V] logits tensor never exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from litsft.batch import IGNORE_INDEX
from litsft.model.lm_head import at_learned, head_logits_at, head_loss_at


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
        with head_loss_at(model, learned, targets) as loss_sum:
            model(**inputs, logits_to_keep=0)
        return loss_sum[0], count
    if gather_head:
        with head_logits_at(model, learned):
            # logits_to_keep=0 keeps every position, so the hook sees the full [B, T, H] it selects from.
            logits = model(**inputs, logits_to_keep=0).logits  # [N, V]
    else:
        logits = at_learned(model(**inputs).logits, learned)  # [N, V]
    loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
    return loss_sum, count
