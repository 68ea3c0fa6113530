"""Micro-batches for one rank, each tagged with the number of learned tokens in its whole optimizer step.

Why the tag: the exact SFT loss of an optimizer step is (sum of token losses) / (learned tokens in the step),
summed over all gradient-accumulation micro-batches and all ranks, as one large batch would give. Averaging
per-micro-batch means instead over-weights the tokens of micro-batches with few learned tokens. Every rank can
compute the step's global token count itself, because every rank derives the same global order from the
seed: no collective, so it works under DDP, FSDP and DeepSpeed alike.

Layout of one epoch (R ranks, batch size B, A accumulation steps):
    global order (seeded permutation, optionally length-grouped) -> global micro-batches of R*B rows
    -> rank r takes the r-th slice of B rows of each -> A consecutive global micro-batches form one step.
A final global micro-batch with fewer than R*B rows is split as evenly as possible; a rank left with no row
gets one dummy row whose labels are all ignored, so every rank runs the same number of steps (no hang) and
the loss stays exact.
"""

from __future__ import annotations

import hashlib
import itertools
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from torch.utils.data import Dataset

from litsft.errors import LitSFTError


class RowKey(NamedTuple):
    """What the sampler hands the dataset for one row."""

    index: int
    step_tokens: int
    """Learned tokens in this row's optimizer step, over all micro-batches and ranks."""
    dummy: bool = False
    """A filler row for a rank with nothing left: contributes no loss."""


class StepBatchSampler:
    """Batch sampler over one rank's share; deterministic for (seed, epoch).

    Lightning calls `set_epoch` on `dataloader.batch_sampler.sampler`, never on the batch sampler itself: wrap it
    in `ResumableBatchSampler` (the datamodule does) or every epoch repeats epoch 0's order.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        num_labels: np.ndarray,
        batch_size: int,
        accumulate: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        group_by_length: bool = True,
        group_batches: int = 64,
    ) -> None:
        if len(lengths) == 0:
            raise ValueError("StepBatchSampler needs at least one row")
        self.lengths = np.asarray(lengths)
        self.num_labels = np.asarray(num_labels, dtype=np.int64)
        self.batch_size = batch_size
        self.accumulate = max(1, accumulate)
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.group_batches = group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        global_batch = self.batch_size * self.num_replicas
        return -(-len(self.lengths) // global_batch)

    def global_batches(self) -> list[np.ndarray]:
        """The epoch's global micro-batches (row indices), identical on every rank."""
        n = len(self.lengths)
        global_batch = self.batch_size * self.num_replicas
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group_by_length:
            # Sort within windows of `group_batches` global batches (longest first), then shuffle the batches:
            # rows in a batch have similar lengths (little padding) while the epoch order stays random.
            window = global_batch * self.group_batches
            chunks = [order[i : i + window] for i in range(0, n, window)]
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        batches = [order[i : i + global_batch] for i in range(0, n, global_batch)]
        if self.shuffle and self.group_by_length and len(batches) > 1:
            # Keep the short last batch last, so every other step has full batches on every rank.
            head = [batches[i] for i in rng.permutation(len(batches) - 1)]
            batches = head + [batches[-1]]
        return batches

    def __iter__(self) -> Iterator[list[RowKey]]:
        batches = self.global_batches()
        step_tokens = [
            int(sum(self.num_labels[b].sum() for b in batches[s : s + self.accumulate]))
            for s in range(0, len(batches), self.accumulate)
        ]
        for j, rows in enumerate(batches):
            tokens = step_tokens[j // self.accumulate]
            mine = np.array_split(rows, self.num_replicas)[self.rank]
            if len(mine) == 0:
                yield [RowKey(int(rows[0]), tokens, dummy=True)]
            else:
                yield [RowKey(int(i), tokens) for i in mine]


class ResumableBatchSampler:
    """The training batch sampler as Lightning and checkpoints see it: epoch order plus exact mid-epoch resume.

    Wraps any batch sampler whose order is a function of (seed, epoch) and that has `set_epoch`, `epoch` and
    `global_batches()` (`StepBatchSampler` and its subclasses).
    - Lightning calls `set_epoch` on `dataloader.batch_sampler.sampler`: the wrapped sampler sits there, so each
      epoch gets its own order.
    - `state_dict(epoch, batches_done)` records where training stands. The caller says how many batches it has
      trained: the DataLoader and Lightning fetch batches ahead, so the sampler cannot know. `load_state_dict`
      makes the next iteration start at that epoch's next batch; the batches before it are index lists only, no
      row is read, collated or trained again.
    - The state holds a digest of the epoch's batch order: resuming with other data, batch size, device count or
      seed raises `LitSFTError` instead of silently training on another order.
    """

    def __init__(self, sampler: StepBatchSampler) -> None:
        self.sampler = sampler
        self._skip = 0  # batches of the next iteration already trained before a resume

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[RowKey]]:
        skip, self._skip = self._skip, 0  # only the first iteration after a resume starts mid-epoch
        return itertools.islice(iter(self.sampler), skip, None)

    def batches_of_epoch(self, epoch: int) -> list[np.ndarray]:
        """Epoch `epoch`'s global micro-batches (row indices), whatever epoch the sampler is at."""
        current = self.sampler.epoch
        self.sampler.set_epoch(epoch)
        try:
            return self.sampler.global_batches()
        finally:
            self.sampler.set_epoch(current)

    def order_digest(self, epoch: int) -> str:
        """A hash of epoch `epoch`'s global micro-batches (row indices, in order): equal iff the order is."""
        digest = hashlib.sha256()
        for rows in self.batches_of_epoch(epoch):
            digest.update(np.asarray(rows, dtype=np.int64).tobytes() + b"|")
        return digest.hexdigest()[:16]

    def settings(self) -> dict[str, int]:
        s = self.sampler
        return {"rows": len(s.lengths), "batch_size": s.batch_size, "devices": s.num_replicas, "seed": s.seed}

    def state_dict(self, epoch: int, batches_done: int) -> dict:
        """Position after `batches_done` trained micro-batches of epoch `epoch` (pass epoch + 1, 0 at its end)."""
        return {
            "epoch": int(epoch),
            "batches_done": int(batches_done),
            "num_batches": len(self),
            "order": self.order_digest(epoch),
            **self.settings(),
        }

    def load_state_dict(self, state: dict) -> None:
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if self.order_digest(epoch) != state["order"] or not 0 <= done <= len(self):
            saved = {k: state.get(k) for k in self.settings()}
            now = self.settings()
            differ = ", ".join(f"{k} {saved[k]} -> {now[k]}" for k in now if saved[k] != now[k])
            raise LitSFTError(
                "--ckpt_path: the checkpoint's training order does not match this run's "
                f"({differ or 'same row count and settings, but different rows or lengths'}). Resuming mid-epoch "
                "needs the same training data, --data.batch_size, --data.seed, --data.val_size, --data.max_seq_length "
                "and device count as the interrupted run. Resume with those, or start a new run without --ckpt_path."
            )
        accumulate = getattr(self.sampler, "accumulate", 1)
        if done % accumulate:
            warnings.warn(
                f"litsft: this checkpoint was written in the middle of an optimizer step (micro-batch {done} of epoch "
                f"{epoch}, accumulation {accumulate}), e.g. by a validation at a micro-batch count that is not a "
                "multiple of --trainer.accumulate_grad_batches. Gradients are not saved, so that one step's resumed "
                "update misses its first micro-batches; every later step is exact.",
                stacklevel=2,
            )
        self.sampler.set_epoch(epoch)
        self._skip = done


class KeyedDataset(Dataset):
    """Looks rows up by `RowKey` and adds the step's token count and the dummy flag to each row."""

    def __init__(self, rows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: RowKey | int) -> dict:
        if not isinstance(key, RowKey):  # plain index (prediction loaders)
            key = RowKey(int(key), 0)
        row = dict(self.rows[key.index])
        row["step_tokens"] = key.step_tokens
        row["dummy"] = key.dummy
        return row

    def __getitems__(self, keys: list[RowKey | int]) -> list[dict]:
        # One Arrow read per micro-batch instead of one per row.
        keys = [k if isinstance(k, RowKey) else RowKey(int(k), 0) for k in keys]
        table = self.rows[[k.index for k in keys]]
        return [
            {**{name: table[name][i] for name in table}, "step_tokens": k.step_tokens, "dummy": k.dummy}
            for i, k in enumerate(keys)
        ]
