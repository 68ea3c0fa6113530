"""The attention mask of packed rows: block-diagonal causal, built on the device from the position ids.

Packed batches (`litsft.data.packing`) carry `position_ids` [S, T] that restart at 0 for each row; this turns them
into the [S, 1, T, T] mask the model's attention code takes, so no token attends across rows.
"""

from __future__ import annotations

import torch

from litsft.errors import LitSFTError

# Attention implementations that take our [B, 1, T, T] mask as is (GPT-2 supports no flex attention).
MASK_FORMATS = ("sdpa", "eager")


def block_causal_mask(position_ids: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] position ids (restarting at 0 for each row) -> a [B, 1, T, T] mask: causal within each row only.

    `sdpa` takes a boolean mask (True = attend); `eager` adds it to the scores (0 or the dtype's minimum).
    Built on the position ids' device with no device-to-host sync.
    """
    if attn_implementation not in MASK_FORMATS:
        raise LitSFTError(
            f"--data.packing needs the model's attention implementation to be one of {', '.join(MASK_FORMATS)} "
            f"(got '{attn_implementation}'). Turn packing off, or load the model with attn_implementation='sdpa'."
        )
    width = position_ids.shape[-1]
    row_id = (position_ids == 0).cumsum(-1)  # [B, T]: which packed row each token belongs to
    same_row = row_id[:, :, None] == row_id[:, None, :]  # [B, T, T]
    causal = torch.ones(width, width, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (same_row & causal)[:, None]  # [B, 1, T, T]
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
