"""`RngStateCallback`: a checkpoint's RNG state, restored when training starts, gives the same draws."""

import random

import numpy as np
import torch

from litsft.callbacks.rng_state import RngStateCallback


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(), random.random()


def test_restored_state_gives_the_same_draws():
    saved = RngStateCallback().state_dict()  # what a checkpoint holds
    expected = draws()
    draws()  # the run went on (or another process started fresh)
    resumed = RngStateCallback()
    resumed.load_state_dict(saved)
    assert draws() != expected  # nothing is restored before training starts (sanity check, loaders draw first)
    resumed.on_train_start(None, None)
    assert draws() == expected


def test_checkpoints_keep_the_key_they_had_before_the_split():
    # checkpoints written when the graceful stop and the RNG state were one callback resume exactly
    assert RngStateCallback().state_key == "InterruptCallback"
