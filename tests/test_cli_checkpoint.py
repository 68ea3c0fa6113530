"""`validate|test|predict --ckpt_path X` as README shows it: X's model and data settings, no other flag (issue 14)."""

from __future__ import annotations

import pytest

from litsft.cli import cli_main

pytestmark = pytest.mark.integration  # every test here runs the CLI or a Trainer (tests/tiers.py)


def test_validate_a_smoke_checkpoint_without_its_config(in_repo, tmp_path, smoke_wandb_run, rank_zero_log):
    """The default config holds distilgpt2 on Alpaca at 512 tokens; the smoke checkpoint's model has 256 positions.
    This failed with "use --data.max_seq_length 256", whose next error was the hub dataset. The checkpoint's data
    settings apply, so validation runs on the smoke run's own validation rows and gives its best val/loss."""
    fit, _ = smoke_wandb_run
    best = fit.trainer.checkpoint_callback
    cli = cli_main(
        ["validate", "--ckpt_path", best.best_model_path, "--trainer.default_root_dir", str(tmp_path),
         "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    )  # fmt: skip
    assert "data settings of the checkpoint" in rank_zero_log.text and "max_seq_length=256" in rank_zero_log.text
    assert cli.datamodule.dataset == "configs/smoke/alpaca_synthetic.json" and cli.datamodule.val_size == 80
    assert float(cli.trainer.callback_metrics["val/loss"]) == pytest.approx(float(best.best_model_score), abs=1e-5)


def test_flags_given_win_over_the_checkpoints(in_repo, tmp_path, smoke_wandb_run):
    fit, _ = smoke_wandb_run
    cli = cli_main(
        ["validate", "--ckpt_path", fit.trainer.checkpoint_callback.best_model_path, "--data.val_size", "16",
         "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
         "--trainer.enable_progress_bar", "false"]
    )  # fmt: skip
    assert cli.datamodule.val_size == 16 and cli.datamodule.max_seq_length == 256
    assert len(cli.datamodule.val_rows) == 16
