"""Right-padded batches with labels built from the stored prompt length."""

from __future__ import annotations

import torch

from litsft.batch import IGNORE_INDEX, learned_positions


def label_ranges(row: dict) -> list[tuple[int, int]]:
    """The learned token ranges [start, end) of a stored row: chat rows list them (`label_spans`, flat pairs), an
    Alpaca row learns everything after its prompt."""
    spans = row.get("label_spans")
    if spans is not None:
        return list(zip(spans[0::2], spans[1::2], strict=True))
    return [(row["prompt_len"], len(row["input_ids"]))]


class SFTCollator:
    """Rows -> `input_ids` [B, T] long, `attention_mask` [B, T] long, `labels` [B, T] long, `step_tokens` [] float.

    Labels come from each row's `prompt_len` (or a chat row's `label_spans`), never from
    `input_ids != pad_token_id`: GPT-2's pad is its EOS,
    and comparing against it would mask the learned EOS. Padding is on the right, labels -100 there.
    `step_tokens` (learned tokens in the whole optimizer step, all ranks) is present when the rows carry it.
    `loss_index` [N] long: where the loss is computed (`litsft.batch.learned_positions`), found here on the host
    so the device never waits for it; its presence also tells the model the batch is right-padded.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            ids = torch.as_tensor(row["input_ids"], dtype=torch.long)
            n = len(ids)
            input_ids[b, :n] = ids
            attention_mask[b, :n] = 1
            if not row.get("dummy", False):
                for start, end in label_ranges(row):
                    labels[b, start:end] = ids[start:end]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        batch["loss_index"] = learned_positions(labels)
        if "step_tokens" in rows[0]:
            batch["step_tokens"] = torch.tensor(float(rows[0]["step_tokens"]))
        return batch
