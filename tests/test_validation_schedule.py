"""Validation about 10 times per run, on optimizer step ends, whatever the data size (callbacks/validation_schedule)."""

import pytest
from lightning.pytorch import Callback

from litsft.callbacks.validation_schedule import ValidationSchedule, validation_steps
from tests.helpers import (
    LEAN_ARGS,
    cli_one_thread,
    csv_logger_args,
    lean_trainer,
    logged_metrics,
    tiny_datamodule,
    tiny_model_args,
    tiny_module,
    write_rows,
)


@pytest.mark.parametrize(("total", "per_run"), [(15, 10), (5, 10), (2_400, 10), (2_437, 10), (1, 10), (45, 7)])
def test_steps_are_evenly_spaced_and_end_at_the_last_step(total, per_run):
    steps = validation_steps(total, per_run)
    assert len(steps) == min(total, per_run) and steps[-1] == total
    assert len(set(steps)) == len(steps) and steps == sorted(steps) and steps[0] >= 1
    gaps = [b - a for a, b in zip([0, *steps], steps)]
    assert max(gaps) - min(gaps) <= 1  # as even as whole steps allow


class ValidationProbe(Callback):
    def __init__(self):
        self.at = []  # (optimizer step, micro-batch index over the run) at each validation during training

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.at.append((trainer.global_step, trainer.fit_loop.epoch_loop.total_batch_idx))


def fit(tmp_path, schedule: ValidationSchedule, epochs=3, **trainer_kw) -> ValidationProbe:
    """7 micro-batches of 2 rows per epoch, accumulate 3: optimizer steps of 3, 3 and 1 micro-batches each epoch."""
    from litsft.smoke_assets import synthetic_rows

    data = write_rows(tmp_path / "rows.json", synthetic_rows(18, seed=4))
    dm = tiny_datamodule(data, tmp_path / "cache", val_size=4, batch_size=2)
    module = tiny_module(seed=None, configure=False, config_overrides=None)
    probe = ValidationProbe()
    trainer = lean_trainer(max_epochs=epochs, accumulate_grad_batches=3, callbacks=[schedule, probe], **trainer_kw)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 3 * epochs
    return probe


# Micro-batch (over the run) that ends optimizer step s: steps end at batches 2, 5, 6 of each 7-batch epoch.
STEP_END = {3 * e + k + 1: 7 * e + b for e in range(3) for k, b in enumerate((2, 5, 6))}


@pytest.mark.integration
def test_validation_runs_per_run_times_at_step_ends_across_uneven_epochs(tmp_path):
    probe = fit(tmp_path, ValidationSchedule(per_run=4))
    assert probe.at == [(s, STEP_END[s]) for s in (3, 5, 7, 9)]  # ceil(9k/4); never inside an accumulation


@pytest.mark.integration
def test_every_n_steps_and_the_last_step(tmp_path):
    probe = fit(tmp_path, ValidationSchedule(every_n_steps=4))
    assert probe.at == [(s, STEP_END[s]) for s in (4, 8, 9)]


@pytest.mark.integration
def test_disabled_leaves_lightnings_schedule(tmp_path):
    probe = fit(tmp_path, ValidationSchedule(enabled=False), epochs=1)
    assert [s for s, _ in probe.at] == [3]  # Lightning's default: at each epoch's end


@pytest.mark.integration
def test_cli_uses_the_schedule_unless_a_lightning_one_is_given(in_repo, tmp_path, alpaca_file):
    from litsft.cli import SFTCLI, run_cli

    def schedule(*extra):
        cli = run_cli(SFTCLI, tiny_model_args(tmp_path, alpaca_file, *extra), run=False)
        return next(c for c in cli.trainer.callbacks if isinstance(c, ValidationSchedule))

    default = schedule()
    assert default.enabled and default.per_run == 10 and default.every_n_steps is None
    assert schedule("--validation.every_n_steps", "3").every_n_steps == 3
    assert not schedule("--trainer.val_check_interval", "0.5").enabled
    assert not schedule("--trainer.check_val_every_n_epoch", "2").enabled
    with pytest.raises(SystemExit) as exit_:
        schedule("--trainer.val_check_interval", "4", "--validation.every_n_steps", "3")
    assert exit_.value.code == 2


def test_bad_settings_name_the_flag():
    from litsft.errors import LitSFTError

    with pytest.raises(LitSFTError, match="--validation.per_run must be a positive integer"):
        ValidationSchedule(per_run=0)
    with pytest.raises(LitSFTError, match="--validation.every_n_steps must be"):
        ValidationSchedule(every_n_steps=0)


@pytest.mark.integration
def test_a_resumed_run_validates_at_the_same_steps_with_the_same_losses(in_repo, tmp_path):
    """12 optimizer steps (2 epochs of 6, accumulate 2), 5 validations at steps 3, 5, 8, 10, 12; resumed from a
    checkpoint of step 4, of step 8 (written at the end of that step, before its validation, which Lightning then
    counts as done, as with its own schedule), and of step 5 written at the end of its validation (what `last.ckpt`
    and the best checkpoint are)."""
    import torch

    from litsft.smoke_assets import synthetic_rows

    data = write_rows(tmp_path / "rows.json", synthetic_rows(56, seed=5))

    def run(root, *extra):
        cli_one_thread(
            ["fit", *tiny_model_args(root, data), *LEAN_ARGS, *csv_logger_args(root), "--trainer.max_epochs", "2",
             "--trainer.accumulate_grad_batches", "2", "--validation.per_run", "5", *extra]
        )  # fmt: skip
        return logged_metrics(root, "train/loss"), logged_metrics(root, "val/loss")

    ref = tmp_path / "ref"
    ref_train, ref_val = run(
        ref, "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath", str(ref / "by_step"),
        "--trainer.callbacks.every_n_train_steps", "4", "--trainer.callbacks.save_top_k", "-1",
        "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath", str(ref / "by_val"),
        "--trainer.callbacks.monitor", "val/loss", "--trainer.callbacks.mode", "max",  # mode: unlike smoke.yaml's
        "--trainer.callbacks.save_top_k", "-1",  # every validation
    )  # fmt: skip
    # Lightning logs step N's metrics, and a validation after it, as step N - 1.
    assert sorted(ref_val) == [2, 4, 7, 9, 11] and sorted(ref_train) == list(range(12))
    for folder, step in (("by_step", 4), ("by_step", 8), ("by_val", 5)):
        checkpoint = next((ref / folder).glob(f"*step={step}.ckpt"))
        assert torch.load(checkpoint, weights_only=True, map_location="cpu")["global_step"] == step
        train, val = run(tmp_path / f"{folder}{step}", "--ckpt_path", str(checkpoint))
        assert train == {s: v for s, v in ref_train.items() if s >= step}  # bit for bit
        assert val == {s: v for s, v in ref_val.items() if s >= step}
