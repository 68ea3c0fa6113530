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

from litsft.callbacks.step_boundary import StepBoundary
from litsft.data.datamodule import AlpacaDataModule
from litsft.errors import LitSFTError
from litsft.run.resume import checkpoint_dir


class NonFiniteLossError(LitSFTError):
    """Training met a NaN or infinite loss or gradient and stopped before applying it."""


class NonFiniteLossCallback(Callback):
    """Drops any update whose loss or gradients are not finite; stops the run, or skips and counts."""

    def __init__(
        self,
        action: Literal["stop", "skip"] = "stop",
        max_skips: int = 10,
        check_gradients: bool = True,
        keep_last_finite: bool = True,
    ):
        """
        Args:
            action: 'stop': save the last state whose loss was finite and stop with a message naming the step and
                its batches. 'skip': leave the weights as they were, count the step (train/skipped_steps), go on.
            max_skips: With action 'skip', stop anyway once more steps than this were skipped.
            check_gradients: Also require a finite gradient norm (an overflow in backward the loss does not show).
            keep_last_finite: With action 'stop', keep a copy of the weights and optimizer state from before each
                update (one more copy of them in device memory), so the saved state is the last one whose loss was
                finite: the weights before the bad step already gave the non-finite loss. False saves those.
        """
        if action not in ("stop", "skip"):
            raise LitSFTError(f"--nonfinite.action must be 'stop' or 'skip', got {action!r}.")
        if max_skips < 0:
            raise LitSFTError(f"--nonfinite.max_skips must be >= 0, got {max_skips}.")
        self.action = action
        self.max_skips = max_skips
        self.check_gradients = check_gradients
        self.keep_last_finite = keep_last_finite
        self.skipped = 0
        self._snapshot: LastFiniteState | None = None
        self._batches: list[int] = []  # micro-batch indices (in the epoch) of the step in progress
        self._boundary = StepBoundary()
        self._bad: dict | None = None  # the current step's failure, between the check and the step's end

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self._boundary.batch_started(trainer)
        self._batches.append(batch_idx)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        finite = torch.ones((), dtype=torch.bool, device=pl_module.device)
        loss = pl_module.step_loss()  # token-weighted over the step's micro-batches and all ranks
        if loss is not None:
            finite = finite & torch.isfinite(loss)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        norm = None
        if self.check_gradients and scaler is None and grads:
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a sharded DTensor
            finite = finite & torch.isfinite(norm)
        if bool(finite):  # the one host sync per optimizer step
            if self.action == "stop" and self.keep_last_finite and LastFiniteState.supported(trainer, optimizer):
                # the state that just gave a finite loss, before this step's update changes it
                self._snapshot = LastFiniteState.take(pl_module, optimizer, self._snapshot, trainer.global_step, loss)
            return
        optimizer.zero_grad(set_to_none=True)  # no gradient, no update: weights and AdamW moments stay as they were
        self.skipped += 1
        self._bad = {
            "step": trainer.global_step + 1,  # 1-based, as train/loss is logged
            "loss": float(loss) if loss is not None else math.nan,
            "grad_norm": float(norm) if norm is not None else None,
            "epoch": trainer.current_epoch,
            "batches": list(self._batches),
            "kept": None,
        }
        if self.action == "stop" and self._snapshot is not None and not math.isfinite(self._bad["loss"]):
            # The weights this step started from already gave the non-finite loss: go back to the last state whose
            # loss was finite (the previous step's update is undone too). With a finite loss and an overflowing
            # gradient, the weights this step started from are that state: they are kept.
            self._snapshot.restore(pl_module, optimizer)
            self._bad["kept"] = (self._snapshot.updates, self._snapshot.loss)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if not self._boundary.step_ended(trainer):
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
        if bad["kept"] is not None:
            updates, finite_loss = bad["kept"]
            loss_text = f" was {finite_loss:.4f}" if finite_loss is not None else " was finite"
            saved = (
                f"The update was not applied, and the one before it was undone: the weights it started from already "
                f"gave this loss. Saved the last state whose loss was finite, the weights after step {updates} "
                f"(their loss at step {updates + 1}{loss_text}), with its optimizer state, in {path.resolve()}.\n"
            )
        else:
            saved = (
                "The update was not applied: the weights are finite, saved with the optimizer state from before it "
                f"in {path.resolve()}.\n"
            )
        raise NonFiniteLossError(
            f"{where}; {reason}. {saved}"
            "Usual causes: a learning rate too high (--model.learning_rate), fp16 overflow (use "
            "--trainer.precision bf16-mixed or 32-true), or broken rows (look at those above with "
            "`python -m litsft.preview`). To go on from the checkpoint (its batches are not repeated; a lower "
            f"--model.learning_rate given with it takes effect), add --ckpt_path {path.resolve()}; to skip such "
            "steps, add --nonfinite.action skip."
        )

    def _describe(self, trainer: Trainer, bad: dict) -> str:
        grad = "" if bad["grad_norm"] is None else f", gradient norm {bad['grad_norm']}"
        batches = bad["batches"]
        span = f"micro-batch {batches[0]}" if len(batches) == 1 else f"micro-batches {batches[0]}-{batches[-1]}"
        text = (
            f"non-finite training loss {bad['loss']}{grad} at step {bad['step']} "
            f"(epoch {bad['epoch']}, {span} of {trainer.num_training_batches})"
        )
        datamodule = trainer.datamodule
        if isinstance(datamodule, AlpacaDataModule):  # litsft's knows the source rows of each micro-batch
            rows = datamodule.source_rows(bad["epoch"], batches)
            more = f" and {len(rows) - 16} more" if len(rows) > 16 else ""
            text += f", source rows {', '.join(map(str, rows[:16]))}{more} of {datamodule.dataset}"
        return text

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


class LastFiniteState:
    """A copy of the weights and optimizer state, taken before an update whose loss was finite.

    Buffers are allocated once and copied into at every step (`torch._foreach_copy_`: one fused copy on a GPU).
    """

    def __init__(self, params: list, param_copy: list, optim_state: dict, updates: int, loss: torch.Tensor | None):
        self.params, self.param_copy, self.optim_state, self.updates = params, param_copy, optim_state, updates
        self.loss_tensor = loss  # on the device: read (a host sync) only if it is ever reported

    @property
    def loss(self) -> float | None:
        return None if self.loss_tensor is None else float(self.loss_tensor)

    @staticmethod
    def supported(trainer: Trainer, optimizer) -> bool:
        # DeepSpeed partitions parameters and keeps its own optimizer state: not copied here.
        deepspeed = "deepspeed" in type(trainer.strategy).__name__.lower()
        return isinstance(optimizer, torch.optim.Optimizer) and not deepspeed

    @classmethod
    def take(cls, pl_module: LightningModule, optimizer, previous: LastFiniteState | None, updates: int, loss):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state = {i: optimizer.state[p] for i, p in enumerate(params) if p in optimizer.state}
        loss = None if loss is None else loss.detach().clone()  # read (host sync) only if it is ever reported
        with torch.no_grad():
            same_shape = (
                previous is not None
                and len(previous.params) == len(params)
                and all(set(previous.optim_state.get(i, {})) == set(s) for i, s in state.items())
                and set(previous.optim_state) == set(state)
            )
            if not same_shape:  # first step, or AdamW just created its moments
                copy = [_local(p).clone() for p in params]
                optim_state = {i: {k: _clone(v) for k, v in s.items()} for i, s in state.items()}
                return cls(params, copy, optim_state, updates, loss)
            torch._foreach_copy_(previous.param_copy, [_local(p) for p in params])
            for i, s in state.items():
                for key, value in s.items():
                    saved = previous.optim_state[i][key]
                    if isinstance(value, torch.Tensor):
                        saved.copy_(value)
                    else:
                        previous.optim_state[i][key] = value
        previous.params, previous.updates, previous.loss_tensor = params, updates, loss
        return previous

    def restore(self, pl_module: LightningModule, optimizer) -> None:
        with torch.no_grad():
            torch._foreach_copy_([_local(p) for p in self.params], self.param_copy)
            for i, p in enumerate(self.params):
                if i in self.optim_state:
                    optimizer.state[p] = {k: _clone(v) for k, v in self.optim_state[i].items()}
                else:
                    optimizer.state.pop(p, None)


def _local(param: torch.Tensor) -> torch.Tensor:
    """The tensor holding this rank's values: the local shard of an FSDP2 DTensor (a view, so copying into it
    writes the parameter), else the parameter itself."""
    param = param.detach()
    return param.to_local() if hasattr(param, "to_local") else param


def _clone(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value
