"""What a command prints: known noise left out (exact messages only), the run's outputs last (issue 14)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from litsft.cli import cli_main
from litsft.run import console
from tests.helpers import REPO, csv_logger_args, tiny_model_args

NOISE = [
    "Tip:", "TPU available", "GPU available: False", "Seed set to", "LeafSpec", "anonymous setting", "git root",
    "Writing model shards", "Flattening the indices", "Saving the dataset", "Run history", "Run summary",
    "Find logs at", "estimate number of stepping batches", "Total estimated model params",
]  # fmt: skip


@pytest.mark.slow  # a real smoke-run process, ~18 s on 2 cores
@pytest.mark.integration
@pytest.mark.timeout(200)
def test_the_smoke_run_prints_what_matters_and_its_outputs_last(tmp_path):
    """A real `python train.py fit -c configs/smoke.yaml` as a new user runs it (W&B offline and not silenced, a
    cold tokenization cache, a run folder that does not exist yet)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "WANDB_QUIET")}
    env.update(LITSFT_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO / "src"))
    root = tmp_path / "runs" / "smoke"
    proc = subprocess.run(
        [sys.executable, "train.py", "fit", "-c", "configs/smoke.yaml", "--trainer.default_root_dir", str(root),
         "--trainer.logger.init_args.save_dir", str(root), "--trainer.max_epochs", "1",
         "--trainer.enable_progress_bar", "false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=190,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stderr + proc.stdout  # the summary is the stdout, printed after everything on stderr
    assert [noise for noise in NOISE if noise in output] == []
    assert "Tokenizing" in proc.stderr  # long work still shows progress
    summary = proc.stdout.strip().splitlines()
    assert summary[0].startswith("litsft: fit done in ") and summary[0].endswith("45 steps")
    rows = {line.split("  ")[1].strip(): line.split("  ", 2)[2].strip() for line in summary[1:]}
    assert set(rows) == {"exported model", "best checkpoint", "last checkpoint", "CSV metrics", "W&B (offline)"}
    assert (REPO / rows["exported model"] / "config.json").is_file() or Path(rows["exported model"]).is_dir()
    for key in ("best checkpoint", "last checkpoint"):
        assert Path(rows[key].split("  ")[0]).is_file(), rows[key]
    assert rows["W&B (offline)"].startswith("wandb sync ") and Path(rows["W&B (offline)"].split()[-1]).is_dir()
    # before training, every line is litsft's own or W&B's offline notice (3 lines), not tips and warnings
    before = proc.stderr.split("litsft model:")[0].splitlines()
    others = [line for line in before if line.strip() and not line.startswith(("litsft", "wandb: ", "Tokenizing"))]
    assert others == [], others


@pytest.mark.integration
def test_summary_of_fit_and_predict_in_process(in_repo, tmp_path, alpaca_file, capsys):
    args = [*tiny_model_args(tmp_path, alpaca_file, "--trainer.max_steps", "2"), *csv_logger_args(tmp_path)]
    cli_main(["fit", *args, "--samples.enabled", "false"])
    lines = capsys.readouterr().out.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("litsft: fit done in"))
    summary = "\n".join(lines[start:])
    assert "exported model   " + str(tmp_path / "run" / "export") in summary
    assert "last checkpoint" in summary and "--ckpt_path last" in summary and "metrics.csv" in summary
    cli_main(["predict", *args, "--ckpt_path", "last"])
    out = capsys.readouterr().out
    assert "litsft: predict done in" in out and str(tmp_path / "run" / "predictions.jsonl") in out


def test_only_the_named_messages_are_dropped():
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    console.quiet_logs()
    drop = next(f for f in logger.filters if isinstance(f, console._DropMessages))
    record = lambda msg: logging.LogRecord(logger.name, logging.INFO, __file__, 1, msg, None, None)  # noqa: E731
    assert not drop.filter(record("GPU available: False, used: False"))
    assert drop.filter(record("GPU available: True (cuda), used: False"))  # a GPU left unused: shown
    assert not drop.filter(record("💡 Tip: For seamless cloud logging and experiment tracking, try installing"))
    assert drop.filter(record("litsft: exported the fine-tuned model to /x"))


def test_noise_warnings_are_dropped_only_from_their_module():
    message = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.quiet_noise_warnings()  # as each command does, inside its own catch_warnings
        warnings.warn_explicit(message, FutureWarning, "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit(message, FutureWarning, "mine.py", 1, module="my_project.trees")
    assert [w.filename for w in caught] == ["mine.py"]


def test_wandb_noise_warnings_and_only_those_are_dropped():
    printed = []
    termwarn = console.quiet_wandb_termwarn(lambda string, *a, **k: printed.append(string))
    termwarn("The anonymous setting has no effect and will be removed in a future version.", repeat=False)
    termwarn("git root runs/smoke does not exist")
    kept = ["git root is not a repository, whatever", "Network error (ConnectionError), entering retry loop."]
    for string in kept:
        termwarn(string)
    assert printed == kept
