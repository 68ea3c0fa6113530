"""`StepBoundary`: did the training micro-batch that just ended also end an optimizer step?

With gradient accumulation, an optimizer step spans several micro-batches, and Lightning calls the batch hooks for
each of them. The callbacks that act once per optimizer step (stop after it, check its loss, measure, validate or
generate after it) ask this one helper, which compares the global step at the batch's end with the one at its start.
"""

from __future__ import annotations

from lightning.pytorch import Trainer


class StepBoundary:
    """Call `batch_started` from `on_train_batch_start`; then `step_ended` answers for that micro-batch, from its
    `on_train_batch_end` on (and in the validation that runs at its end), until the next one starts."""

    def __init__(self) -> None:
        self.step_at_batch_start: int | None = None  # None: no training micro-batch has started yet

    def batch_started(self, trainer: Trainer) -> None:
        self.step_at_batch_start = trainer.global_step

    def step_ended(self, trainer: Trainer) -> bool:
        """True when the current micro-batch ran the optimizer (not when gradient accumulation continues)."""
        return self.step_at_batch_start is not None and trainer.global_step != self.step_at_batch_start
