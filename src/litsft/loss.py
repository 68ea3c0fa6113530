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

from litsft.data.tokenize import IGNORE_INDEX


def head_can_be_gathered(model) -> bool:
    """True when logits are just `lm_head(last hidden state)` (no soft-capping or scaling after the head)."""
    config = model.config
    return (
        model.get_output_embeddings() is not None
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) in (None, 1.0)
    )


def masked_ce_sum(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, gather_head: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of token cross-entropies over learned positions (fp32) and their count.

    `labels` [B, T] are aligned with `input_ids` (not shifted): position t predicts labels[:, t + 1].
    Returns (loss_sum [] fp32, num_tokens [] long). Dividing is left to the caller, who knows the right
    denominator (all learned tokens of the optimizer step).
    """
    targets_bt = labels[:, 1:]  # [B, T-1]: the token each position must predict
    learned = targets_bt != IGNORE_INDEX  # [B, T-1]
    targets = targets_bt[learned]  # [N]
    if gather_head:
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B,T,H]
        logits = model.get_output_embeddings()(hidden[:, :-1][learned])  # [N, V]
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][learned]  # [N, V]
    loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
    return loss_sum, learned.sum()
