"""AdamW parameter groups and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

from litsft.errors import LitSFTError


def check_optimizer_settings(
    learning_rate: float, weight_decay: float, betas, warmup_ratio: float, min_lr_ratio: float
) -> None:
    """Refuse values AdamW or the schedule would take without a word and train wrongly (or crash on later)."""

    def number(flag: str, value, low: float, high: float | None = None, open_high: bool = False) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= low
        if ok and high is not None:
            ok = value < high if open_high else value <= high
        if not ok:
            span = f"in [{low:g}, {high:g}{')' if open_high else ']'}" if high is not None else f">= {low:g}"
            raise LitSFTError(f"--model.{flag} must be a number {span}, got {value!r}.")

    if not (isinstance(learning_rate, int | float) and math.isfinite(learning_rate) and learning_rate > 0):
        raise LitSFTError(f"--model.learning_rate must be a positive number, got {learning_rate!r}.")
    number("weight_decay", weight_decay, 0.0)
    number("warmup_ratio", warmup_ratio, 0.0, 1.0)  # above 1 the schedule would never reach its peak
    number("min_lr_ratio", min_lr_ratio, 0.0, 1.0)  # above 1 the "decay" would raise the learning rate
    if not isinstance(betas, list | tuple) or len(betas) != 2:
        raise LitSFTError(f"--model.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got {betas!r}.")
    for beta in betas:
        number("betas", beta, 0.0, 1.0, open_high=True)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear and embedding weights); never biases or norm gains (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(total_steps: int, warmup_steps: int, min_lr_ratio: float):
    """LambdaLR factor: linear from ~0 to 1 over `warmup_steps`, then cosine down to `min_lr_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
