"""Tokens per second, padding share and MFU of training, measured without a host-device sync per step.

Per micro-batch, a few reductions on the device add the batch's counts to a device tensor; the counts reach
the host only every `log_every_n_steps` optimizer steps (one `.tolist()`), where the rates over that window
are computed and logged. The wall-clock window ends at that read, so it covers the device's work too.
"""

from __future__ import annotations

import time

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from litsft.batch import IGNORE_INDEX
from litsft.callbacks.step_boundary import StepBoundary
from litsft.model.flops import ModelShape, compute_dtype, peak_flops, training_flops

# Device counters, in this order: learned tokens, real (non-padding) tokens, causal attention pairs, LM-head
# positions. Host-side (shape-only) counts need no device work: token slots and micro-batches.
SUPERVISED, TOTAL, PAIRS, HEAD = range(4)


def batch_counts(batch: dict, gather_head: bool) -> tuple[torch.Tensor, int]:
    """Device tensor [4] of (learned tokens, real tokens, attention pairs, head positions), and the slots B*T.

    A token at position p of its row attends to p + 1 keys (causal), so pairs = sum over real tokens of p + 1.
    """
    input_ids, mask = batch["input_ids"], batch["attention_mask"]  # [B, T]
    positions = batch.get("position_ids")  # [B, T] when rows are packed; else 0..T-1 in every row
    if positions is None:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    real = mask.bool()
    total = real.sum()
    pairs = ((positions + 1) * real).sum()
    if "loss_index" in batch:
        supervised = torch.full_like(total, batch["loss_index"].numel())
    else:
        supervised = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    head = supervised if gather_head else total
    return torch.stack([supervised, total, pairs, head]), input_ids.numel()


class ThroughputCallback(Callback):
    """Logs `train/tokens_per_sec` (learned tokens), `train/tokens_per_sec_total` (all non-padding tokens),
    `train/padding_share` (padding / all token slots) and `train/mfu` (model FLOP/s / the devices' peak), summed
    over ranks. MFU needs the device's peak FLOP/s: from `litsft.model.flops.PEAK_FLOPS` or `peak_flops`; for an
    unknown device (a CPU, say) it is not logged, and a note says so once.

    After `fit`, `summary` holds the totals of the whole run (tokens, seconds, FLOPs) with validation time
    left out.
    """

    def __init__(self, enabled: bool = True, log_every_n_steps: int | None = None, peak_flops: float | None = None):
        """
        Args:
            enabled: Set false to turn the throughput metrics off.
            log_every_n_steps: Optimizer steps per measurement window (default: the trainer's log_every_n_steps).
            peak_flops: Peak FLOP/s of ONE device for the run's precision, when the built-in table lacks it.
        """
        self.enabled = enabled
        self.log_every_n_steps = log_every_n_steps
        self.peak_flops = peak_flops
        self.summary: dict[str, float] = {}
        self.last_metrics: dict[str, float] = {}
        self._boundary = StepBoundary()
        self._validation_start: float | None = None

    # -- setup ----------------------------------------------------------------------------------------------

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled:
            return
        self._counts = torch.zeros(4, dtype=torch.long, device=pl_module.device)
        self._slots = 0
        self._window_counts = torch.zeros(4, dtype=torch.long)  # host copy at the last log
        self._window_slots = 0
        self._batches_in_window = 0
        self._every = self.log_every_n_steps or trainer.log_every_n_steps or 1
        self._excluded = self._excluded_total = 0.0  # seconds spent in validation: since the last log, in all
        self._gather_head = bool(pl_module.gather_head)
        self._shape, self._peak = self._flop_setup(trainer, pl_module)
        self._start = self._window_start = time.perf_counter()
        self.summary = {}

    def _flop_setup(self, trainer: Trainer, pl_module: LightningModule) -> tuple[ModelShape | None, float | None]:
        config = pl_module.hf_config
        try:
            shape = ModelShape.from_config(config)
        except ValueError as err:
            rank_zero_info(f"litsft: train/mfu is not logged: no FLOP count for this model ({err}).")
            return None, None
        adapters = pl_module.adapter_params  # LoRA: frozen base, trainable adapters
        if adapters:
            shape = shape.with_adapters(adapters)
        device = trainer.strategy.root_device
        peak = self.peak_flops
        if peak is None:
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
            tf32 = torch.get_float32_matmul_precision() != "highest"
            peak = peak_flops(name, compute_dtype(trainer.precision, tf32))
            if peak is None:
                rank_zero_info(
                    f"litsft: train/mfu is not logged: no peak FLOP/s known for '{name}' at precision "
                    f"{trainer.precision}. Pass --throughput.peak_flops (FLOP/s of one device) to log it."
                )
        return shape, peak

    # -- counting (no host sync) ----------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self._boundary.batch_started(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if not self.enabled:
            return
        counts, slots = batch_counts(batch, self._gather_head)
        self._counts += counts
        self._slots += slots
        self._batches_in_window += 1
        if self._boundary.step_ended(trainer) and trainer.global_step % self._every == 0:
            self._log_window(trainer)

    # Validation inside `fit` pauses the clock: the rates are those of training.
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled and not trainer.sanity_checking and hasattr(self, "_counts"):
            self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._validation_start is not None:
            seconds = time.perf_counter() - self._validation_start
            self._excluded += seconds
            self._excluded_total += seconds
            self._validation_start = None

    # -- reading the counts (one sync per window) -----------------------------------------------------------

    def _read(self, trainer: Trainer) -> tuple[torch.Tensor, int]:
        """Counts since the start, summed over ranks: the one host-device sync of a window."""
        counts = trainer.strategy.reduce(self._counts.clone(), reduce_op="sum").cpu()
        slots = torch.tensor(float(self._slots), device=self._counts.device)
        slots = int(trainer.strategy.reduce(slots, reduce_op="sum"))
        return counts, slots

    def _metrics(self, counts: torch.Tensor, slots: int, seconds: float, devices: int) -> dict[str, float]:
        supervised, total, pairs, head = (int(c) for c in counts)
        seconds = max(seconds, 1e-9)
        metrics = {
            "train/tokens_per_sec": supervised / seconds,
            "train/tokens_per_sec_total": total / seconds,
            "train/padding_share": 1.0 - total / slots if slots else 0.0,
        }
        if self._shape is not None:
            flops = training_flops(self._shape, total, pairs, head)
            metrics["train/flops_per_sec"] = flops / seconds
            if self._peak:
                metrics["train/mfu"] = flops / seconds / (self._peak * devices)
        return metrics

    def _log_window(self, trainer: Trainer) -> tuple[torch.Tensor, int, float]:
        """Log the rates since the last log; return the run's counts so far and the time of the read."""
        counts, slots = self._read(trainer)
        now = time.perf_counter()
        if self._batches_in_window:
            seconds = now - self._window_start - self._excluded
            window = counts - self._window_counts
            self.last_metrics = self._metrics(window, slots - self._window_slots, seconds, trainer.world_size)
            for logger in trainer.loggers:
                logger.log_metrics(self.last_metrics, step=trainer.global_step)
        self._window_counts, self._window_slots, self._batches_in_window = counts, slots, 0
        self._window_start, self._excluded = now, 0.0
        return counts, slots, now

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled or not hasattr(self, "_counts"):
            return
        # The last window (fewer than log_every_n_steps steps) is logged too, so a short run logs once.
        counts, slots, now = self._log_window(trainer)
        seconds = now - self._start - self._excluded_total
        supervised, total, pairs, head = (int(c) for c in counts)
        self.summary = {
            "seconds": seconds,
            "supervised_tokens": supervised,
            "total_tokens": total,
            "token_slots": slots,
            "attention_pairs": pairs,
            "head_tokens": head,
            **self._metrics(counts, slots, seconds, trainer.world_size),
        }
        if self._shape is not None:
            self.summary["flops"] = training_flops(self._shape, total, pairs, head)
        del self._counts
