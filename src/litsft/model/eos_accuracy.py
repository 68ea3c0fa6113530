"""`val/eos_acc`: does the model predict EOS where each response ends (teacher forcing)?

A fine-tuned model that never learned to stop rambles until `max_new_tokens`. Loss alone hides this: the EOS
is one token among ~100 per row. This counts, at every position whose target is the appended EOS, whether
EOS is the argmax. The logits come from the validation loss's own forward (`litsft.model.lm_head.capture_head_output`),
so nothing runs twice and the training loss path is untouched. Argmax is unchanged by the monotone logit
transforms some models apply after the head (soft-capping, scaling), so the head's raw output suffices.
"""

from __future__ import annotations

import torch

from litsft.batch import IGNORE_INDEX


def eos_hits(
    head_output: torch.Tensor, labels: torch.Tensor, eos_token_id: int | list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(EOS targets predicted as argmax [] long, EOS targets [] long) for one batch.

    `labels` [B, T] aligned with `input_ids` (position t predicts labels[:, t + 1]). `head_output` is [N, V]
    over the learned positions in row-major order (the gathered head) or [B, T, V]. Only the appended EOS is
    an EOS target: a literal "<|endoftext|>" in a row is tokenized as text, and padding is labelled -100.
    Several ids (chat data: the end-of-turn token and EOS): a target that is any of them counts, and is hit when
    the argmax is that very target.
    """
    targets_bt = labels[:, 1:]  # [B, T-1]
    learned = targets_bt != IGNORE_INDEX  # [B, T-1]
    logits = head_output[:, :-1][learned] if head_output.dim() == 3 else head_output  # [N, V]
    targets = targets_bt[learned]  # [N]
    stop = torch.as_tensor(eos_token_id, device=targets.device).view(-1)
    at_eos = torch.isin(targets, stop)  # [N]
    hits = (logits[at_eos].argmax(dim=-1) == targets[at_eos]).sum()  # argmax over [K, V], K rows ending in EOS
    return hits, at_eos.sum()
