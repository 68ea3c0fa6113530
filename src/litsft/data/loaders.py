"""DataLoaders from tokenized rows: per-rank micro-batches (plain or packed), collated, resumable for training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from litsft.data.collate import SFTCollator
from litsft.data.packing import PackedBatchSampler, PackedCollator
from litsft.data.sampler import KeyedDataset, ResumableBatchSampler, StepBatchSampler


@dataclass(frozen=True)
class Placement:
    """Where this process's batches go: the trainer's side of the loader (1 process, no accumulation without one)."""

    world_size: int = 1
    rank: int = 0
    accumulate: int = 1
    on_gpu: bool = False

    @classmethod
    def of(cls, trainer) -> Placement:
        if trainer is None:
            return cls()
        return cls(
            trainer.world_size,
            trainer.global_rank,
            trainer.accumulate_grad_batches,
            trainer.strategy.root_device.type == "cuda",
        )


@dataclass(frozen=True)
class BatchSettings:
    """The datamodule's batching flags (`--data.*`)."""

    pad_token_id: int
    batch_size: int
    max_seq_length: int
    seed: int
    num_workers: int = 0
    group_by_length: bool = True
    packing: bool = False
    pad_to_multiple_of: int | None = None


def collator(settings: BatchSettings) -> SFTCollator:
    return SFTCollator(settings.pad_token_id, settings.pad_to_multiple_of)


def step_sampler(rows, settings: BatchSettings, placement: Placement, shuffle: bool) -> StepBatchSampler:
    return StepBatchSampler(
        lengths=row_lengths(rows) if len(rows) else np.zeros(0),
        num_labels=np.asarray(rows["num_labels"][:]),
        batch_size=settings.batch_size,
        accumulate=placement.accumulate if shuffle else 1,
        num_replicas=placement.world_size,
        rank=placement.rank,
        seed=settings.seed,
        shuffle=shuffle,
        group_by_length=settings.group_by_length or not shuffle,  # evaluation order is free: sort by length
    )


def train_batches(rows, settings: BatchSettings, placement: Placement) -> tuple[ResumableBatchSampler, object]:
    """The training batch sampler (a new order each epoch, exact mid-epoch resume) and its collator."""
    if settings.packing:
        sampler = PackedBatchSampler(
            lengths=row_lengths(rows),
            num_labels=np.asarray(rows["num_labels"][:]),
            batch_size=settings.batch_size,
            capacity=settings.max_seq_length,
            accumulate=placement.accumulate,
            num_replicas=placement.world_size,
            rank=placement.rank,
            seed=settings.seed,
        )
        collate_fn = PackedCollator(settings.pad_token_id, settings.max_seq_length, settings.pad_to_multiple_of)
    else:
        sampler, collate_fn = step_sampler(rows, settings, placement, shuffle=True), collator(settings)
    return ResumableBatchSampler(sampler), collate_fn


def loader(rows, batch_sampler, collate_fn, settings: BatchSettings, placement: Placement) -> DataLoader:
    return DataLoader(
        KeyedDataset(rows),
        batch_sampler=batch_sampler,
        collate_fn=collate_fn,
        num_workers=settings.num_workers,
        pin_memory=placement.on_gpu,  # page-locked host batches: the copy to the GPU can overlap compute
        persistent_workers=settings.num_workers > 0,
        # Starting to iterate draws a worker seed: from this generator, not from the global RNG that dropout
        # uses, so a resumed run (which sets up its loaders at other times) draws the same dropout masks.
        generator=torch.Generator().manual_seed(settings.seed),
    )


def eval_loader(rows, settings: BatchSettings, placement: Placement) -> DataLoader:
    """Validation/test rows: every rank its share, sorted by length (little padding), no accumulation."""
    return loader(rows, step_sampler(rows, settings, placement, shuffle=False), collator(settings), settings, placement)


def row_lengths(rows) -> np.ndarray:
    """Tokens per row, read from Arrow's list offsets: ~0.2 s for 52,000 rows, where a Python list per row
    takes ~1.5 s of every (even cached) start."""
    import pyarrow.compute as pc

    return pc.list_value_length(rows.with_format("arrow")[:]["input_ids"]).to_numpy()


def describe_step(rows, batch_size: int, packing: bool, placement: Placement) -> str:
    """`batch_size` is per device: what one optimizer step holds, to keep it when the device count changes."""
    devices, accumulate = placement.world_size, placement.accumulate
    total = batch_size * devices * accumulate
    unit = "packed sequences" if packing else "rows"
    tokens = np.mean([len(x) for x in rows["input_ids"][:2000]]) * total
    learned = np.mean(rows["num_labels"][:2000]) * total
    size = f" (~{tokens:,.0f} tokens, ~{learned:,.0f} learned)" if not packing else ""
    return (
        f"litsft batch: {batch_size} {unit} per device x {devices} device(s) x {accumulate} accumulation = "
        f"{total:,} {unit} per optimizer step{size}. To keep it on another device count, scale "
        "--data.batch_size or --trainer.accumulate_grad_batches."
    )
