"""Where a run stands and how to continue it: trained position, RNG state, `--ckpt_path` checks, the resume command.

An interrupted run must continue as if it had never stopped. Lightning restores the weights, optimizer, LR
schedule and loop counters; litsft adds the data position (`ResumableBatchSampler`, through the datamodule's
state) and the random number generators (dropout), and checks a checkpoint before Lightning opens it, so a
wrong path or file is one message instead of a stack trace from `torch.load`.
"""

from __future__ import annotations

import random
import re
import shlex
import zipfile
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from litsft.errors import LitSFTError

LAST_NAME = re.compile(r"^last(-v\d+)?\.ckpt$")  # ModelCheckpoint's last.ckpt, last-v1.ckpt, ...


def trained_position(trainer) -> tuple[int, int]:
    """(epoch, micro-batches of it trained), counted as Lightning will count them when it restores the loops.

    After a restore Lightning treats `batch_progress.current.processed` batches of the epoch as done, whichever
    hook saved the checkpoint (a step end, a validation end, an exception at a batch boundary). The epoch is the
    one those batches belong to: `epoch_progress.current.started - 1` (`current_epoch` moves on before the
    batch counter is reset). A finished epoch is reported as the start of the next one.
    """
    fit_loop = trainer.fit_loop
    epoch = max(0, fit_loop.epoch_progress.current.started - 1)
    done = fit_loop.epoch_loop.batch_progress.current.processed
    if done >= trainer.num_training_batches:
        return epoch + 1, 0
    return epoch, done


# -- random number generators (dropout draws from them: a resumed run must draw what the uninterrupted one did) --


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


# -- --ckpt_path ----------------------------------------------------------------------------------------------


def search_roots(trainer_config: dict) -> list[Path]:
    """The run's folders, from the trainer's config: `default_root_dir` and every logger `save_dir` and
    checkpoint `dirpath` in it (read before the trainer exists, so `--ckpt_path last` resolves first of all)."""
    found: list[str] = [trainer_config.get("default_root_dir") or "."]

    def walk(value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("save_dir", "dirpath") and isinstance(item, str | Path):
                    found.append(str(item))
                else:
                    walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk({k: trainer_config.get(k) for k in ("logger", "callbacks")})
    return list(dict.fromkeys(Path(root).expanduser().resolve() for root in found))


def find_last_checkpoint(roots: list[Path]) -> Path | None:
    """The newest `last*.ckpt` under `roots`.

    Lightning's own `ckpt_path="last"` looks only in this run's checkpoint folder, which is new for each run
    when a logger numbers its versions (csv/version_1/...): it would silently start from scratch.
    """
    found = [p for root in roots if root.is_dir() for p in root.rglob("last*.ckpt") if LAST_NAME.match(p.name)]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def check_checkpoint(path: Path, weights_only: bool, for_fit: bool) -> None:
    """Open `path` the way Lightning will (memory-mapped, so cheap) and explain what is wrong with it."""
    if not path.is_file():
        raise LitSFTError(f"--ckpt_path: '{path}' does not exist. Check the path, or pass --ckpt_path last.")
    if not zipfile.is_zipfile(path):
        raise LitSFTError(f"--ckpt_path: '{path}' is not a checkpoint written by `python train.py fit` (*.ckpt).")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except Exception as err:  # noqa: BLE001 - every failure to open becomes one message
        if weights_only and "weights_only" in str(err):
            raise LitSFTError(
                f"--ckpt_path: '{path}' holds Python objects that loading would have to run as code, so litsft "
                "refuses it (checkpoints load with weights_only=True). Only if you trust where the file comes "
                "from, add --weights_only false."
            ) from err
        raise LitSFTError(f"--ckpt_path: could not read '{path}' ({type(err).__name__}: {str(err)[:200]}).") from err
    missing = [key for key in ("state_dict", "loops", "optimizer_states") if key not in checkpoint] if for_fit else []
    if missing or not isinstance(checkpoint, dict):
        raise LitSFTError(
            f"--ckpt_path: '{path}' is not a full training checkpoint (no {', '.join(missing) or 'state'}), so "
            "training cannot resume from it. Resume from a last.ckpt written by `python train.py fit`."
        )


def resolve_last_checkpoint(roots: list[Path], weights_only: bool, subcommand: str) -> str:
    """`--ckpt_path last`: the newest last.ckpt under the run's folders, checked."""
    newest = find_last_checkpoint(roots)
    if newest is None:
        raise LitSFTError(
            f"--ckpt_path last: no last.ckpt under {', '.join(map(str, roots))}. Pass the checkpoint's path (the "
            "interrupted run printed it), the run's --trainer.default_root_dir, or leave --ckpt_path out to start "
            "a new run."
        )
    rank_zero_info(f"litsft: resuming from {newest}")
    check_checkpoint(newest, weights_only, for_fit=subcommand == "fit")
    return str(newest)


def resume_command(args: list[str], ckpt_path: str, prog: str = "python train.py") -> str:
    """The command line that resumes `args` from `ckpt_path` (any earlier --ckpt_path replaced)."""
    kept, skip_next = [], False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg == "--ckpt_path":
            skip_next = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join([*shlex.split(prog), *kept, "--ckpt_path", ckpt_path])
