"""How to continue a run: where its checkpoints are, `--ckpt_path` (and `last`) checked, the resume command.

An interrupted run must continue as if it had never stopped. Lightning restores the weights, optimizer, LR
schedule and loop counters; litsft adds the data position (`ResumableBatchSampler`, through the datamodule's
state) and the random number generators (`litsft.callbacks.rng_state`), and checks a checkpoint before Lightning
opens it, so a wrong path or file is one message instead of a stack trace from `torch.load`.
"""

from __future__ import annotations

import re
import shlex
import time
import zipfile
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from litsft.errors import LitSFTError

LAST_NAME = re.compile(r"^last(-v\d+)?\.ckpt$")  # ModelCheckpoint's last.ckpt, last-v1.ckpt, ...


def checkpoint_dir(trainer) -> Path:
    """Where ModelCheckpoint writes (so `--ckpt_path last` finds it), else `<default_root_dir>/checkpoints`: where
    litsft's own checkpoints go (`last.ckpt` on a signal, `nonfinite-step<N>.ckpt`)."""
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "dirpath", None):  # another Checkpoint class may have none
        return Path(callback.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"


# -- --ckpt_path ----------------------------------------------------------------------------------------------


def _entries(value) -> list[dict]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list | tuple):
        return [entry for entry in value if isinstance(entry, dict)]
    return []


def checkpoint_folders(trainer_config: dict) -> list[tuple[Path, str]]:
    """Where this run's checkpoints can be, from the trainer's config, as (folder, glob pattern) pairs.

    Read before the trainer exists, so `--ckpt_path last` resolves first of all. Lightning's ModelCheckpoint writes
    to its `dirpath` when set, else to `<first logger's save_dir>/<name>/<version>/checkpoints` (W&B: name = project,
    version = run id; CSV: name, version_N), else to `<default_root_dir>/checkpoints` when there is no logger. Only
    those layouts are searched, never a whole tree: a W&B logger without `save_dir` resolves to ".", and searching
    "." would find every other run under the working directory (another run's `last.ckpt`).
    """
    root = Path(trainer_config.get("default_root_dir") or ".").expanduser()
    folders: list[tuple[Path, str]] = [(root, "checkpoints/last*.ckpt")]  # no logger; litsft's interrupt fallback
    loggers = trainer_config.get("logger")
    if loggers is None or loggers is True:  # Lightning's default logger: <default_root_dir>/lightning_logs/version_N
        folders.append((root, "*/*/checkpoints/last*.ckpt"))
    for entry in _entries(loggers):
        args = entry.get("init_args") or {}
        save_dir = args.get("save_dir")
        is_wandb = str(entry.get("class_path", "")).rsplit(".", 1)[-1] == "WandbLogger"
        if save_dir in (None, "") or (is_wandb and str(save_dir) == "."):  # as prepare_loggers resolves it
            save_dir = root
        folders.append((Path(save_dir).expanduser(), "*/*/checkpoints/last*.ckpt"))
    for entry in _entries(trainer_config.get("callbacks")):
        dirpath = (entry.get("init_args") or {}).get("dirpath")
        if isinstance(dirpath, str | Path):
            folders.append((Path(dirpath).expanduser(), "last*.ckpt"))
    unique = {(folder.resolve(), pattern): None for folder, pattern in folders}
    return list(unique)


def find_last_checkpoints(folders: list[tuple[Path, str]]) -> list[Path]:
    """Every `last*.ckpt` of the run's checkpoint folders, newest first.

    Lightning's own `ckpt_path="last"` looks only in this run's checkpoint folder, which is new for each run
    when a logger numbers its versions (csv/version_1/...): it would silently start from scratch.
    """
    found = {
        path.resolve()
        for folder, pattern in folders
        if folder.is_dir()
        for path in folder.glob(pattern)
        if LAST_NAME.match(path.name) and path.is_file()
    }
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


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


def resolve_last_checkpoint(trainer_config: dict, weights_only: bool, subcommand: str) -> str:
    """`--ckpt_path last`: the newest last.ckpt of this run's checkpoint folders, checked and announced."""
    folders = checkpoint_folders(trainer_config)
    found = find_last_checkpoints(folders)
    if not found:
        raise LitSFTError(
            f"--ckpt_path last: no last.ckpt under {', '.join(str(f / p) for f, p in folders)}. Pass the checkpoint's "
            "path (the interrupted run printed it), the run's --trainer.default_root_dir, or leave --ckpt_path out "
            "to start a new run."
        )
    newest = found[0]
    check_checkpoint(newest, weights_only, for_fit=subcommand == "fit")
    step = torch.load(newest, map_location="cpu", weights_only=weights_only, mmap=True).get("global_step")
    written = time.strftime("%Y-%m-%d %H:%M", time.localtime(newest.stat().st_mtime))
    others = f"; the newest of {len(found)} last.ckpt of this run's folders" if len(found) > 1 else ""
    rank_zero_info(f"litsft: --ckpt_path last: {newest} (step {step}, written {written}{others})")
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
