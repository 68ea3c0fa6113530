"""Batched greedy/sampled generation from prompt token ids, left-padded, stopping at EOS, with a time limit.

Right-padded prompts make a decoder continue after pad tokens and garble the answers,
so prompts are left-padded here, whatever padding side the training tokenizer uses; the tokenizer itself
is never modified (we pad token ids, not text).

Rank safety: with a sharded model (FSDP, DeepSpeed ZeRO-3) every rank must run the same number of forward
passes, because each forward all-gathers parameters. `synced_gpus=True` makes Hugging Face's decode loop
keep stepping on a rank that is done until all ranks are done, so a rank whose deadline fires earlier than
another's (clocks differ by a step) never leaves the others waiting in a collective.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext

import torch
from transformers import MaxTimeCriteria, StoppingCriteriaList


class Deadline(MaxTimeCriteria):
    """Stops generation once `max_time` seconds have passed since creation, and remembers that it did.

    One `Deadline` can span several batches: it counts from its creation, not from each batch's start.
    """

    def __init__(self, max_time: float) -> None:
        super().__init__(max_time=max_time, initial_timestamp=time.time())
        self.expired = False

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = super().__call__(input_ids, scores, **kwargs)  # [B] bool, all equal
        self.expired = self.expired or bool(done[0])
        return done


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


@contextmanager
def cpu_threads(device: torch.device, threads: int | None):
    """Run with `threads` intra-op threads on a CPU (restored after); no change on a GPU or with None.

    A decode step of a small model is a few dozen tiny ops. Split over threads, each op waits for every thread at
    its end, so a thread the OS has parked (a shared or busy machine) stalls the whole step: one sample round of
    5 prompts x 128 tokens with a 3.4M-parameter GPT-2 took 9-25 s with 2 threads next to two other busy
    processes on 2 cores, and 0.45 s with 1 (0.3 s either way on an idle machine; benchmarks/sample_round.py).
    """
    if device.type != "cpu" or threads is None or threads == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rng_scope(device: torch.device, seed: int | None):
    """Seeded sampling must not move the training RNG (dropout, data order): fork it and restore it after."""
    if seed is None:
        return nullcontext()
    devices = [device] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


@torch.no_grad()
def generate_ids(
    model,
    prompts: list[list[int]],
    eos_token_id: int | list[int],
    pad_token_id: int,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int | None = None,
    deadline: Deadline | None = None,
    synced_gpus: bool = False,
    num_threads: int | None = None,
) -> list[tuple[list[int], bool]]:
    """New tokens for each prompt (EOS excluded) and whether generation stopped at EOS.

    `eos_token_id`: one id or several (chat: the end-of-turn token and EOS); the answer ends at the first of them.

    `batch_size` prompts go through `generate` at a time (default: all). `deadline` cuts generation short when
    its time is up (check `deadline.expired`). `synced_gpus`: set on every rank of a sharded model, which must
    all call this with the same prompts and `max_new_tokens`. `num_threads`: intra-op threads on a CPU while
    generating (see `cpu_threads`); None keeps the process's setting.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    kwargs = {"do_sample": do_sample}
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:  # greedy: unset the sampling knobs a checkpoint's generation_config may carry (avoids warnings)
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if deadline is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([deadline])
    step = batch_size or len(prompts)
    stops = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    results: list[tuple[list[int], bool]] = []
    try:
        with _rng_scope(device, seed if do_sample else None), cpu_threads(device, num_threads):
            if do_sample and seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(prompts), step):
                input_ids, attention_mask = left_pad(prompts[start : start + step], pad_token_id, device)
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=eos_token_id,
                    pad_token_id=pad_token_id,
                    use_cache=True,  # also when gradient checkpointing turned the config's cache off
                    synced_gpus=synced_gpus,
                    **kwargs,
                )
                # out [b, P + new]: the prompt part is the padded input; after a row's EOS come pad tokens
                for row in out[:, input_ids.shape[1] :].tolist():
                    end = next((i for i, t in enumerate(row) if t in stops), None)
                    results.append((row if end is None else row[:end], end is not None))
    finally:
        model.train(was_training)
    return results
