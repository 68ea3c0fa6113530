"""`RngStateCallback`: every checkpoint holds the random number generators, and a resumed run draws from them.

Dropout draws from torch's generator (and code may draw from numpy's and Python's): a resumed run must draw what
the uninterrupted one would have. Lightning restores weights, optimizer, LR schedule and loop counters, the
datamodule the data position; this callback stores every rank's generators in each checkpoint and puts them back
when training starts, after the sanity check and loader set-up that a resumed run adds (they draw too).
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer

# The key of the callback's state in checkpoints: the name of the callback that held it before the RNG state and
# the graceful stop were two callbacks, so that checkpoints written before resume exactly, and without a warning.
STATE_KEY = "InterruptCallback"


def rng_state() -> dict:
    """torch (CPU and current CUDA device), numpy and Python RNG states, as plain data (`weights_only` loads it)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)), "pos": np_state["state"]["pos"]},
        "numpy_gauss": [np_state["has_gauss"], np_state["gauss"]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    has_gauss, gauss = state["numpy_gauss"]
    key = state["numpy"]["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, int(state["numpy"]["pos"]), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RngStateCallback(Callback):
    """Stores every rank's RNG state in each checkpoint; restores it when a resumed run starts training."""

    def __init__(self) -> None:
        self.to_restore: dict | None = None  # from the checkpoint, until training starts

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.to_restore is not None:
            set_rng_state(self.to_restore)
            self.to_restore = None

    def state_dict(self) -> dict:
        # Every rank draws its own dropout masks (its batches have other shapes), so every rank's generators are
        # stored: Lightning writes rank 0's callback state only, and rank 0's state restored on rank 1 would make
        # every later step differ under DDP. Checkpoints are dumped on all ranks together, so a gather is safe.
        state = rng_state()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
            return {"rng": states[0], "rng_per_rank": states}
        return {"rng": state}

    def load_state_dict(self, state_dict: dict) -> None:
        per_rank = state_dict.get("rng_per_rank")
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if per_rank is not None and rank < len(per_rank):
            self.to_restore = per_rank[rank]
        else:
            self.to_restore = state_dict.get("rng")
