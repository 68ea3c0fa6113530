"""Token-weighted loss aggregation that is exact across micro-batches and ranks and never syncs the host."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class TokenMean(Metric):
    """(sum of token losses) / (number of tokens), over every update and, at `compute`, every rank.

    Not torchmetrics' `MeanMetric(nan_strategy="disable")`: in torchmetrics 1.9 that setting also replaces the
    weights by ones, silently turning a token-weighted mean into a mean of batch means. And not its NaN checks
    either: they cost a device-to-host sync per update. A non-finite loss shows up in the result.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("loss_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, loss_sum: torch.Tensor, tokens: torch.Tensor) -> None:
        """`loss_sum`: summed token cross-entropy of a micro-batch; `tokens`: its learned-token count."""
        self.loss_sum += loss_sum.detach().float()
        self.tokens += tokens.detach().float()

    def compute(self) -> torch.Tensor:
        return self.loss_sum / self.tokens.clamp(min=1)
