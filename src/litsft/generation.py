"""Batched greedy/sampled generation from prompt token ids, left-padded, stopping at EOS.

Right-padded prompts make a decoder continue after pad tokens and garble the answers (transformers#34842),
so prompts are left-padded here, whatever padding side the training tokenizer uses; the tokenizer itself
is never modified.
"""

from __future__ import annotations

import torch


def left_pad(prompts: list[list[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> `input_ids` [B, P] and `attention_mask` [B, P], padded on the left."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        if p:
            input_ids[b, width - len(p) :] = torch.as_tensor(p, dtype=torch.long)
            attention_mask[b, width - len(p) :] = 1
    return input_ids.to(device), attention_mask.to(device)


@torch.no_grad()
def generate_ids(
    model,
    prompts: list[list[int]],
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> list[tuple[list[int], bool]]:
    """New tokens for each prompt (EOS excluded) and whether generation stopped at EOS."""
    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad(prompts, pad_token_id, device)
    was_training = model.training
    model.eval()
    kwargs = {"do_sample": do_sample}
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
        if seed is not None:
            torch.manual_seed(seed)
    try:
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **kwargs,
        )
    finally:
        model.train(was_training)
    results = []
    for row in out[:, input_ids.shape[1] :].tolist():
        stopped = eos_token_id in row
        results.append((row[: row.index(eos_token_id)] if stopped else row, stopped))
    return results
