"""`PredictionWriter`: `python train.py predict` writes its answers as JSON Lines.

One object per prompt, in order: `{"prompt", "response", "stopped"}` (`stopped`: the answer ended with EOS
rather than at `--model.max_new_tokens`). Lines are written as batches finish, so an interrupted run keeps
what it answered. The prompts are the validation rows, or `--data.predict_file`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class PredictionWriter(Callback):
    """Streams `predict` outputs to a JSONL file on rank 0."""

    def __init__(self, path: str | None = None, enabled: bool = True) -> None:
        """
        Args:
            path: Output file (default: `<trainer.default_root_dir>/predictions.jsonl`); replaced if it exists.
            enabled: Set false to write nothing.
        """
        self.path = path
        self.enabled = enabled
        self.written_to: Path | None = None
        self._file = None
        self._count = 0

    def output_path(self, trainer: Trainer) -> Path:
        return Path(self.path or os.path.join(trainer.default_root_dir, "predictions.jsonl"))

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every rank answers every prompt (the predict loader is not sharded): rank 0 alone writes.
        if not self.enabled or not trainer.is_global_zero:
            return
        path = self.output_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", encoding="utf-8")
        self._count = 0
        self.written_to = path

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._file is None:
            return
        for record in outputs:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self._count += len(outputs)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._file is not None:
            self._close()
            rank_zero_info(f"litsft: wrote {self._count} predictions to {self.written_to.resolve()}")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._close()
