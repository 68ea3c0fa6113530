"""A NaN or infinite loss never reaches the weights: the update is dropped, then the run stops (or skips, counted).

The check runs once per optimizer step, after backward and before the update (Lightning's
`on_before_optimizer_step`, before gradient clipping): the step's loss (token-weighted over all its
micro-batches and ranks, the value logged as `train/loss`) and the norm of all gradients must be finite.
Deciding "update or not" on the host needs one device-to-host sync per optimizer step (not per micro-batch);
Lightning's progress bar already reads the loss each step, so this adds about nothing.

A bad step's gradients are dropped (`zero_grad(set_to_none=True)`: AdamW then leaves every parameter and its
moments untouched). Then:
- `stop` (default): at the end of that step, save `nonfinite-step<N>.ckpt` (weights, optimizer and data position
  from before the bad update; resuming from it continues with the next batch) and stop with a message naming the
  step, its batches and their source rows.
- `skip`: go on; the count is logged as `train/skipped_steps` and kept in checkpoints. More than `max_skips`
  skipped steps stop the run as above: the model is diverging, not meeting one bad batch.
With fp16 mixed precision the gradient scaler already skips steps with overflowing gradients (that is how it
finds its scale), so only the loss is checked there.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from litsft.callbacks.interrupt import checkpoint_dir
from litsft.errors import LitSFTError


class NonFiniteLossError(LitSFTError):
    """Training met a NaN or infinite loss or gradient and stopped before applying it."""


class NonFiniteLossCallback(Callback):
    """Drops any update whose loss or gradients are not finite; stops the run, or skips and counts."""

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_skips: int = 10, check_gradients: bool = True):
        """
        Args:
            action: 'stop': save a checkpoint from before the bad update and stop with a message naming the step
                and its batches. 'skip': leave the weights as they were, count the step (train/skipped_steps), go on.
            max_skips: With action 'skip', stop anyway once more steps than this were skipped.
            check_gradients: Also require a finite gradient norm (an overflow in backward the loss does not show).
        """
        if action not in ("stop", "skip"):
            raise LitSFTError(f"--nonfinite.action must be 'stop' or 'skip', got {action!r}.")
        if max_skips < 0:
            raise LitSFTError(f"--nonfinite.max_skips must be >= 0, got {max_skips}.")
        self.action = action
        self.max_skips = max_skips
        self.check_gradients = check_gradients
        self.skipped = 0
        self._batches: list[int] = []  # micro-batch indices (in the epoch) of the step in progress
        self._step_at_batch_start = 0
        self._bad: dict | None = None  # the current step's failure, between the check and the step's end

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step
        self._batches.append(batch_idx)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        finite = torch.ones((), dtype=torch.bool, device=pl_module.device)
        loss = None
        metric = getattr(pl_module, "train_loss", None)  # SFTModule's step loss, before it logs and resets it
        if metric is not None and metric.update_count > 0:
            loss = metric.compute()
            finite = finite & torch.isfinite(loss)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        norm = None
        if self.check_gradients and scaler is None and grads:
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a sharded DTensor
            finite = finite & torch.isfinite(norm)
        if bool(finite):  # the one host sync per optimizer step
            return
        optimizer.zero_grad(set_to_none=True)  # no gradient, no update: weights and AdamW moments stay as they were
        self.skipped += 1
        self._bad = {
            "step": trainer.global_step + 1,  # 1-based, as train/loss is logged
            "loss": float(loss) if loss is not None else math.nan,
            "grad_norm": float(norm) if norm is not None else None,
            "epoch": trainer.current_epoch,
            "batches": list(self._batches),
        }

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._step_at_batch_start:
            return  # gradient accumulation continues
        self._batches = []
        bad, self._bad = self._bad, None
        if bad is None:
            return
        where = self._describe(trainer, bad)
        if self.action == "skip" and self.skipped <= self.max_skips:
            pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)
            rank_zero_warn(
                f"litsft: {where}: the update was skipped ({self.skipped} of at most {self.max_skips} "
                "skipped steps, --nonfinite.max_skips)."
            )
            return
        path = checkpoint_dir(trainer) / f"nonfinite-step{bad['step']}.ckpt"
        trainer.save_checkpoint(path)
        reason = (
            f"more than --nonfinite.max_skips={self.max_skips} steps were skipped, the model is diverging"
            if self.action == "skip"
            else "stopped (--nonfinite.action stop)"
        )
        raise NonFiniteLossError(
            f"{where}; {reason}. The update was not applied: the weights are finite, saved with the optimizer "
            f"state from before it in {path.resolve()}.\n"
            "Usual causes: a learning rate too high (--model.learning_rate), fp16 overflow (use "
            "--trainer.precision bf16-mixed or 32-true), or broken rows (look at those above with "
            "`python -m litsft.preview`). To go on from the checkpoint (the bad step is not repeated), add "
            f"--ckpt_path {path.resolve()}; to skip such steps, add --nonfinite.action skip."
        )

    def _describe(self, trainer: Trainer, bad: dict) -> str:
        grad = "" if bad["grad_norm"] is None else f", gradient norm {bad['grad_norm']}"
        batches = bad["batches"]
        span = f"micro-batch {batches[0]}" if len(batches) == 1 else f"micro-batches {batches[0]}-{batches[-1]}"
        text = (
            f"non-finite training loss {bad['loss']}{grad} at step {bad['step']} "
            f"(epoch {bad['epoch']}, {span} of {trainer.num_training_batches})"
        )
        source_rows = getattr(trainer.datamodule, "source_rows", None)
        if callable(source_rows):
            rows = source_rows(bad["epoch"], batches)
            more = f" and {len(rows) - 16} more" if len(rows) > 16 else ""
            text += f", source rows {', '.join(map(str, rows[:16]))}{more} of {trainer.datamodule.dataset}"
        return text

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
