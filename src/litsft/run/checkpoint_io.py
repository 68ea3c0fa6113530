"""Checkpoints written atomically beside their target: a crash during a save never costs the previous one.

Lightning's `TorchCheckpointIO` writes through an fsspec transaction whose temporary file lives in the system
temp folder: moving it onto the run's disk is a copy when that is another filesystem, so a process killed
during the save leaves a 0-byte or half `last.ckpt` where the good one was, and a full disk ends in a
traceback from the rename. `AtomicCheckpointIO` serializes the checkpoint in memory (as Lightning does), then
writes it with `litsft.atomic_files.write_bytes`: temp file in the checkpoint's folder, fsync, rename, fsync
of the folder; on a full disk, one message with the folder, the size needed and the space free.
Remote paths (s3://, gs://, ...) keep Lightning's own writer.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from litsft.atomic_files import write_bytes
from litsft.lightning_compat import configured_checkpoint_io, is_local_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with an atomic, durable local write."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not is_local_path(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        path = Path(path)
        write_bytes(path, buffer.getbuffer(), what=f"checkpoint '{path.name}'")


def use_atomic_checkpoints(trainer) -> None:
    """Make the trainer's strategy write checkpoints atomically, unless the user configured a CheckpointIO."""
    strategy = trainer.strategy
    current = configured_checkpoint_io(strategy)
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
