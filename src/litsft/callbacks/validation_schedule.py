"""`ValidationSchedule`: validate about `per_run` times per run, evenly spaced in optimizer steps, the last at the end.

Lightning's `val_check_interval` counts micro-batches of one epoch: `0.25` validates every 4 optimizer steps of a
52,000-row epoch (fine) but at every step of a 300-row file with batch 16 x 4 (each time with a round of sample
generations). The right cadence depends on the run's length, which is known only once the data is loaded; so this
callback picks the steps at the start of training: `ceil(k * total / per_run)` for k = 1..per_run, or every
`every_n_steps` steps, and always the last step (the export takes the best validated checkpoint).

Validation always falls on an optimizer step's end (never inside gradient accumulation, so checkpoints written at
validation hold whole steps), also when an epoch's micro-batches are not a multiple of the accumulation. How: with
`check_val_every_n_epoch=None`, at each batch end this tells Lightning whether to validate after that micro-batch
(`litsft.lightning_compat.set_validation_due`).

An explicit `--trainer.val_check_interval` or `--trainer.check_val_every_n_epoch` (not 1) is Lightning's schedule:
the CLI then turns this one off.
"""

from __future__ import annotations

import math

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from litsft.callbacks.step_boundary import StepBoundary
from litsft.errors import LitSFTError
from litsft.lightning_compat import set_validation_due


def validation_steps(total_steps: int, per_run: int) -> list[int]:
    """`per_run` optimizer steps spread evenly over `total_steps`, the last one last (fewer in a shorter run)."""
    return sorted({math.ceil(k * total_steps / per_run) for k in range(1, per_run + 1)} - {0})


class ValidationSchedule(Callback):
    """When `fit` validates (and, by default, generates samples): a number of times per run, not per epoch."""

    def __init__(self, enabled: bool = True, per_run: int = 10, every_n_steps: int | None = None) -> None:
        """
        Args:
            enabled: False: Lightning's own schedule (`--trainer.val_check_interval`, `check_val_every_n_epoch`).
                Setting either of those turns this off.
            per_run: Validations per run, evenly spaced in optimizer steps, the last at the final step.
            every_n_steps: Validate every N optimizer steps (and at the final step) instead of `per_run` times.
        """
        if per_run < 1:
            raise LitSFTError(f"--validation.per_run must be a positive integer, got {per_run}.")
        if every_n_steps is not None and every_n_steps < 1:
            raise LitSFTError(f"--validation.every_n_steps must be a positive integer or null, got {every_n_steps}.")
        self.enabled = enabled
        self.per_run = per_run
        self.every_n_steps = every_n_steps
        self.total_steps: int | None = None
        self.steps: list[int] = []  # the chosen steps with `per_run` (with `every_n_steps`: multiples, and the last)
        self._boundary = StepBoundary()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.enabled and stage == TrainerFn.FITTING:
            trainer.check_val_every_n_epoch = None  # count batches over the whole run, not within an epoch

    def is_validation_step(self, step: int) -> bool:
        if step <= 0 or self.total_steps is None:
            return False
        if self.every_n_steps is not None:
            return step % self.every_n_steps == 0 or step == self.total_steps
        return step in self.steps

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled:
            return
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):  # no max_steps and max_epochs -1: no end to spread validations over
            self.every_n_steps = self.every_n_steps or max(
                1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
            )
            total = -1
        self.total_steps = int(total)
        if self.every_n_steps is None:
            self.steps = validation_steps(self.total_steps, self.per_run)
            when = f"{len(self.steps)} times in {self.total_steps} optimizer steps (at steps {_shorten(self.steps)})"
        else:
            when = f"every {self.every_n_steps} optimizer steps" + (
                f" and at the last step ({self.total_steps})" if self.total_steps > 0 else ""
            )
        rank_zero_info(
            f"litsft validation: {when}; set --validation.per_run or --validation.every_n_steps to change it."
        )
        # A resumed run: Lightning asks at its first batch whether the checkpoint's last batch was due a validation
        # (to finish or skip it as its own schedule would). Checkpoints are written at optimizer step ends.
        set_validation_due(trainer, self.is_validation_step(trainer.global_step))

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self._boundary.batch_started(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.enabled:
            stepped = self._boundary.step_ended(trainer)
            set_validation_due(trainer, stepped and self.is_validation_step(trainer.global_step))


def _shorten(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) if len(steps) <= 12 else f"{steps[0]}, {steps[1]}, ..., {steps[-1]}"
