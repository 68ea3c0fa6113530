"""Micro-batches for one rank, each tagged with the number of learned tokens in its whole optimizer step.

Why the tag: the exact SFT loss of an optimizer step is (sum of token losses) / (learned tokens in the step),
summed over all gradient-accumulation micro-batches and all ranks, as one large batch would give. Averaging
per-micro-batch means instead over-weights short rows (only torchtune gets this right). Every rank can
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

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from torch.utils.data import Dataset


class RowKey(NamedTuple):
    """What the sampler hands the dataset for one row."""

    index: int
    step_tokens: int
    """Learned tokens in this row's optimizer step, over all micro-batches and ranks."""
    dummy: bool = False
    """A filler row for a rank with nothing left: contributes no loss."""


class StepBatchSampler:
    """Batch sampler over one rank's share; deterministic for (seed, epoch). Lightning calls `set_epoch`."""

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
