"""What the data rules did, in the run itself: row counts, token length percentiles, the supervised share.

Printed at the start of `fit` and written to the W&B run summary (`data/...`), so a run's page says how many
rows were dropped or truncated and how long the rows were, next to its curves.
"""

from __future__ import annotations

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


def data_audit(datamodule) -> dict[str, float] | None:
    """`data/*` numbers of a set-up `AlpacaDataModule` (None for a datamodule without litsft's counts)."""
    from litsft.data.datamodule import AlpacaDataModule
    from litsft.data.loaders import row_lengths

    if not isinstance(datamodule, AlpacaDataModule):
        return None
    counts, splits = datamodule.counts, [datamodule.train_rows, datamodule.val_rows]
    if counts is None or any(s is None for s in splits):
        return None

    # Row lengths from Arrow's list offsets (a chat row's learned tokens are not one suffix): no Python lists.
    lengths = np.concatenate([row_lengths(s).astype(np.int64) if len(s) else np.zeros(0, np.int64) for s in splits])
    learned = np.concatenate([np.asarray(s["num_labels"][:], dtype=np.int64) for s in splits])
    audit = {
        "data/rows": counts.rows,
        "data/kept": counts.kept,
        "data/dropped": counts.dropped,
        "data/truncated": counts.truncated,
        "data/empty_output": counts.empty_output,
        "data/train_rows": len(splits[0]),
        "data/val_rows": len(splits[1]),
    }
    if counts.format == "messages":
        audit |= {
            "data/no_assistant": counts.no_assistant,
            "data/control_tokens": counts.control_tokens,
            "data/turns": counts.turns,
            "data/turns_cut": counts.turns_cut,
            "data/cut_mid_turn": counts.cut_mid_turn,
        }
    if len(lengths):
        p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
        audit |= {
            "data/tokens_p50": float(p50),
            "data/tokens_p90": float(p90),
            "data/tokens_p99": float(p99),
            "data/tokens_max": int(lengths.max()),
            "data/supervised_share": float(learned.sum() / max(1, lengths.sum())),
        }
    return audit


def describe(audit: dict[str, float]) -> str:
    text = (
        f"litsft data audit: {audit['data/rows']:,} rows, {audit['data/dropped']:,} dropped, "
        f"{audit['data/truncated']:,} truncated; "
        f"{audit['data/train_rows']:,} train / {audit['data/val_rows']:,} validation rows"
    )
    if "data/tokens_p50" in audit:
        text += (
            f"; tokens per row p50 {audit['data/tokens_p50']:.0f}, p90 {audit['data/tokens_p90']:.0f}, "
            f"p99 {audit['data/tokens_p99']:.0f}, max {audit['data/tokens_max']}; "
            f"{audit['data/supervised_share']:.1%} of tokens are learned"
        )
    return text


class DataAuditCallback(Callback):
    """Prints the data audit at the start of `fit` and puts it in the W&B run summary."""

    def __init__(self) -> None:
        self.audit: dict[str, float] | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.audit = data_audit(trainer.datamodule)
        if self.audit is None:
            return
        rank_zero_info(describe(self.audit))
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(self.audit)
