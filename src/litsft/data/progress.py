"""Progress bars while data is prepared: the long part shows one, the seconds-long steps after it none."""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def no_datasets_progress():
    """No "Flattening the indices" / "Saving the dataset" bars while the tokenized rows are cached: seconds at most,
    right after the "Tokenizing" bar that shows the long part. A user's HF_DATASETS_DISABLE_PROGRESS_BARS wins."""
    from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    if os.environ.get("HF_DATASETS_DISABLE_PROGRESS_BARS") is not None or not is_progress_bar_enabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()
