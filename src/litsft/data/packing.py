"""Packing: several rows in one sequence of up to `max_seq_length` tokens, with no attention across rows.

Why: a batch of packed sequences has almost no padding whatever the spread of row lengths, and a fixed token
budget per micro-batch.

How rows stay apart (so training on a packed batch is training on its rows one by one):
- position ids restart at 0 for each row: every row sees the positions it would see alone;
- the attention mask is block-diagonal causal: a token attends only to earlier tokens of its own row
  ([B, 1, T, T], built on the device from the position ids by `litsft.model.attention_mask`);
- the first token of each row is never a target (it would be predicted from the previous row's last token),
  so the packed loss is the unpacked loss, token for token.
Trailing padding forms a "row" of its own (its positions restart at 0): it attends only to itself, so no
softmax row is empty, and it has no label.

Rows are packed once per run (best-fit decreasing, seeded), and the order of the packed sequences is shuffled
every epoch: every epoch then has the same number of steps, which the learning-rate schedule counts up front.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import numpy as np
import torch

from litsft.batch import IGNORE_INDEX, learned_positions
from litsft.data.collate import label_ranges
from litsft.data.sampler import RowKey, StepBatchSampler


def pack_bins(lengths: np.ndarray, capacity: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Best-fit decreasing: rows, longest first (ties in random order), each go into the fullest bin they fit.

    Returns the row indices of each bin; every bin holds at most `capacity` tokens.
    """
    lengths = np.asarray(lengths)
    if len(lengths) and lengths.max() > capacity:
        raise ValueError(f"a row of {lengths.max()} tokens does not fit a bin of {capacity}")
    order = rng.permutation(len(lengths))
    order = order[np.argsort(-lengths[order], kind="stable")]
    free: list[tuple[int, int]] = []  # (free tokens, bin id), sorted: the first with enough room is the fullest
    bins: list[list[int]] = []
    for i in order.tolist():
        need = int(lengths[i])
        k = bisect.bisect_left(free, (need, -1))
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - need > 0:
            bisect.insort(free, (room - need, b))
    return [np.asarray(b, dtype=np.int64) for b in bins]


class PackedBatchSampler(StepBatchSampler):
    """Per rank, micro-batches of `batch_size` packed sequences (bins of at most `capacity` tokens).

    Yields the rows of the rank's bins, bin after bin, each tagged with its optimizer step's learned-token count
    over all micro-batches and ranks (as `StepBatchSampler` does, so the loss stays exact). A rank left without
    a bin in the last micro-batch gets one dummy row.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        num_labels: np.ndarray,
        batch_size: int,
        capacity: int,
        accumulate: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__(lengths, num_labels, batch_size, accumulate, num_replicas, rank, seed, shuffle, False)
        self.capacity = capacity
        self.bins = pack_bins(self.lengths, capacity, np.random.default_rng([seed, 1]))

    def __len__(self) -> int:
        return -(-len(self.bins) // (self.batch_size * self.num_replicas))

    def global_bin_batches(self) -> list[list[np.ndarray]]:
        """The epoch's global micro-batches, each a list of bins (row indices), identical on every rank."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.bins)) if self.shuffle else np.arange(len(self.bins))
        per_batch = self.batch_size * self.num_replicas
        return [[self.bins[k] for k in order[i : i + per_batch]] for i in range(0, len(order), per_batch)]

    def global_batches(self) -> list[np.ndarray]:
        return [np.concatenate(bins) for bins in self.global_bin_batches()]

    def __iter__(self) -> Iterator[list[RowKey]]:
        batches = self.global_bin_batches()
        step_tokens = [
            int(sum(self.num_labels[np.concatenate(b)].sum() for b in batches[s : s + self.accumulate]))
            for s in range(0, len(batches), self.accumulate)
        ]
        for j, bins in enumerate(batches):
            tokens = step_tokens[j // self.accumulate]
            mine = np.array_split(np.arange(len(bins)), self.num_replicas)[self.rank]
            if len(mine) == 0:
                yield [RowKey(int(bins[0][0]), tokens, dummy=True)]
            else:
                yield [RowKey(int(i), tokens) for k in mine for i in bins[k]]


class PackedCollator:
    """Rows -> packed sequences of at most `capacity` tokens, filled in the given order (next fit).

    Returns `input_ids`, `labels`, `position_ids`, `attention_mask` (1 on row tokens, 0 on trailing padding),
    each [S, T] long with S sequences, `loss_index` [N] long (flat indices into [S, T] of the positions whose
    next token is learned) and `step_tokens` [] float when the rows carry it.
    """

    def __init__(self, pad_token_id: int, capacity: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.capacity = capacity
        self.pad_to_multiple_of = pad_to_multiple_of

    def pack(self, lengths: list[int]) -> list[list[int]]:
        """Indices of the rows in each sequence: next fit, in order."""
        sequences: list[list[int]] = []
        fill = self.capacity
        for i, n in enumerate(lengths):
            if fill + n > self.capacity:
                sequences.append([])
                fill = 0
            sequences[-1].append(i)
            fill += n
        return sequences

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [len(r["input_ids"]) for r in rows]
        sequences = self.pack(lengths)
        width = max(sum(lengths[i] for i in seq) for seq in sequences)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        shape = (len(sequences), width)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros(shape, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.long)
        for s, seq in enumerate(sequences):
            start = 0
            for i in seq:
                row, n = rows[i], lengths[i]
                ids = torch.as_tensor(row["input_ids"], dtype=torch.long)
                input_ids[s, start : start + n] = ids
                position_ids[s, start : start + n] = torch.arange(n)
                attention_mask[s, start : start + n] = 1
                if not row.get("dummy", False):
                    # From the prompt's end (each learned range of a chat row), but never the row's first token:
                    # its "prediction" would come from the previous row's last token.
                    for a, b in label_ranges(row):
                        a = max(a, 1)
                        labels[s, start + a : start + b] = ids[a:b]
                start += n
            position_ids[s, start:] = torch.arange(width - start)  # trailing padding: a row of its own
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "position_ids": position_ids,
            "loss_index": learned_positions(labels),
        }
        if "step_tokens" in rows[0]:
            batch["step_tokens"] = torch.tensor(float(rows[0]["step_tokens"]))
        return batch
