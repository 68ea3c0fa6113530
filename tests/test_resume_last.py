"""`--ckpt_path last` means this run's own checkpoint folders, never another run's beside it (issue 14)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from litsft.errors import LitSFTError
from litsft.run.resume import checkpoint_folders, find_last_checkpoints, resolve_last_checkpoint
from litsft.run.wandb_setup import run_id_from_checkpoint
from tests.helpers import REPO, SMOKE_MODEL, cli_one_thread

WANDB_THEN_CSV = [
    {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "litsft", "save_dir": "."}},
    {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs/smoke", "name": "csv"}},
]


def fake_checkpoint(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "loops": {}, "optimizer_states": [], "global_step": step}, path)
    return path


def test_last_never_searches_the_working_directory_for_a_wandb_logger_without_save_dir(tmp_path, monkeypatch):
    """The issue's layout: runs/smoke and runs/smoke_tty side by side, smoke_tty's checkpoint newer. W&B's save_dir
    is "." (its default); the old search covered "." and so resumed smoke_tty's run."""
    monkeypatch.chdir(tmp_path)
    own = fake_checkpoint(tmp_path / "runs/smoke/litsft/aaaa/checkpoints/last.ckpt", step=10)
    other = fake_checkpoint(tmp_path / "runs/smoke_tty/litsft/bbbb/checkpoints/last.ckpt", step=99)
    os.utime(own, (time.time() - 60, time.time() - 60))  # the other run's is the newest file in the repository
    trainer = {"default_root_dir": "runs/smoke", "logger": WANDB_THEN_CSV}
    assert find_last_checkpoints(checkpoint_folders(trainer)) == [own.resolve()]
    assert resolve_last_checkpoint(trainer, True, "fit") == str(own.resolve())
    # `python train.py fit --ckpt_path last` (the default job, whose folder holds nothing): an error naming where
    # it looked, instead of resuming the smoke run
    default_job = {"default_root_dir": "runs/alpaca-distilgpt2", "logger": [dict(WANDB_THEN_CSV[0])]}
    with pytest.raises(LitSFTError, match=r"no last.ckpt under .*alpaca-distilgpt2") as err:
        resolve_last_checkpoint(default_job, True, "fit")
    assert "smoke" not in str(err.value) and other.is_file()


@pytest.mark.parametrize(
    ("trainer", "layout"),
    [
        ({"logger": False}, "run/checkpoints/last.ckpt"),  # no logger: <default_root_dir>/checkpoints
        ({"logger": None}, "run/lightning_logs/version_0/checkpoints/last.ckpt"),  # Lightning's default logger
        (
            {"logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "csvdir"}}]},
            "csvdir/lightning_logs/version_3/checkpoints/last-v1.ckpt",
        ),
        (
            {"logger": False, "callbacks": [{"class_path": "ModelCheckpoint", "init_args": {"dirpath": "ckpts"}}]},
            "ckpts/last.ckpt",
        ),
    ],
)
def test_last_follows_where_model_checkpoint_writes(tmp_path, monkeypatch, trainer, layout):
    monkeypatch.chdir(tmp_path)
    expected = fake_checkpoint(tmp_path / layout, step=1)
    fake_checkpoint(tmp_path / "elsewhere/run/checkpoints/last.ckpt", step=2)  # newer, not this run's
    assert find_last_checkpoints(checkpoint_folders({"default_root_dir": "run", **trainer})) == [expected.resolve()]


def test_newest_of_the_runs_own_checkpoints_wins(tmp_path):
    old = fake_checkpoint(tmp_path / "litsft/aaaa/checkpoints/last.ckpt", step=5)
    new = fake_checkpoint(tmp_path / "litsft/cccc/checkpoints/last.ckpt", step=7)
    os.utime(old, (time.time() - 60, time.time() - 60))
    trainer = {"default_root_dir": str(tmp_path), "logger": WANDB_THEN_CSV[:1]}
    assert find_last_checkpoints(checkpoint_folders(trainer)) == [new.resolve(), old.resolve()]


def short_run(root: str, *extra: str) -> list[str]:
    """The smoke config as the issue ran it (W&B offline logger without save_dir, then CSV), one short epoch."""
    return [
        "fit", "-c", str(REPO / "configs/smoke.yaml"), "--model.model_name_or_path", str(SMOKE_MODEL),
        "--data.dataset", str(REPO / "configs/smoke/alpaca_synthetic.json"), "--data.val_size", "16",
        "--trainer.default_root_dir", root, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4",
        "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "2",
        "--trainer.enable_progress_bar", "false",
        "--samples.enabled", "false", "--export.enabled", "false", *extra,
    ]  # fmt: skip


@pytest.mark.integration
def test_two_runs_side_by_side_each_resumes_its_own(tmp_path, monkeypatch, rank_zero_log):
    """End to end, as in the issue: `fit --ckpt_path last` for runs/smoke after runs/smoke_tty ran, from the same
    working directory; it resumes runs/smoke's own W&B run and says which file it took."""
    monkeypatch.chdir(tmp_path)
    smoke = cli_one_thread(short_run("runs/smoke"))
    cli_one_thread(short_run("runs/smoke_tty"))  # newer, in the same working directory
    smoke_id = smoke.trainer.loggers[0].version
    own = next((tmp_path / "runs/smoke/litsft").glob("*/checkpoints/last.ckpt"))
    assert run_id_from_checkpoint(own) == smoke_id
    resumed = cli_one_thread(short_run("runs/smoke", "--trainer.max_epochs", "2", "--ckpt_path", "last"))
    assert resumed.trainer.loggers[0].version == smoke_id  # the same W&B run: runs/smoke's, not smoke_tty's
    assert resumed.trainer.global_step == 8
    assert f"--ckpt_path last: {own.resolve()} (step 4, written " in rank_zero_log.text
