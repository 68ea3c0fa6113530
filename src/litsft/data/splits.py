"""The train/validation split: which rows validate, drawn over source row indices with the data seed."""

from __future__ import annotations

import numpy as np

from litsft.errors import LitSFTError


def validation_mask(rows, num_source_rows: int, val_size: int | float, seed: int) -> np.ndarray:
    """Which of the kept rows `rows` (their source row indices) validate: [len(rows)] bool.

    Drawn over source row indices with `seed`, so the validation rows do not change with tokenizer or length
    settings (a dropped row simply leaves a hole); the same for every run with the same data and seed.
    `val_size` is a count (int) or a fraction of the source rows (float).
    """
    n_val = val_size if isinstance(val_size, int) else round(val_size * num_source_rows)
    if n_val >= num_source_rows:
        raise LitSFTError(
            f"--data.val_size={val_size} asks for {n_val} validation rows but the data has only "
            f"{num_source_rows}. Use a smaller count or a fraction such as 0.02."
        )
    val_rows = np.random.default_rng(seed).permutation(num_source_rows)[:n_val]
    return np.isin(np.asarray(rows), val_rows)
