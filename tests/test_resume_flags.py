"""Resuming with changed flags: each one takes effect with a line saying so (learning rate and schedule), or the
run is refused before anything is written, the flag named (model shape, data, batch layout). And the NaN guard
saves the last state whose loss was finite, from which a lower learning rate goes on."""

import json
import math
import re
import shutil

import lightning.pytorch  # noqa: F401 - before any test captures stderr: its log handler keeps that stream
import pytest
import torch

from tests.helpers import LEAN_ARGS, cli_one_thread, csv_logger_args, logged_metrics, tiny_model_args, write_rows

pytestmark = pytest.mark.integration  # every test here runs the CLI or a Trainer (tests/tiers.py)


def wandb_and_csv(run) -> str:
    return json.dumps([
        {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "litsft", "offline": True}},
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run), "name": "csv"}},
    ])  # fmt: skip


def base_args(tmp_path, data, *extra) -> list[str]:
    return ["fit", *tiny_model_args(tmp_path, data), *LEAN_ARGS, *csv_logger_args(tmp_path), *extra]


@pytest.fixture
def stopped_run(in_repo, tmp_path, alpaca_file):
    """A run stopped after 4 of 8 steps, as an interrupted one, with its last.ckpt."""
    cli_one_thread(base_args(tmp_path, alpaca_file, "--trainer.max_steps", "4"))
    return tmp_path, alpaca_file, next(tmp_path.rglob("last.ckpt"))


def newest_last(root):
    return max(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)


def run_files(run) -> dict:
    """Every file of a run folder and its bytes. W&B's files count by name only: its service process goes on
    writing them for a moment after a run has finished."""
    return {
        p: None if "wandb" in p.relative_to(run).parts else p.read_bytes()
        for p in run.rglob("*")
        if p.is_file() and p.parent.name != "logs"
    }


def expected_lr(peak: float, step: int, total: int, warmup_ratio: float, min_ratio: float) -> float:
    """Linear warmup over round(warmup_ratio * total) steps, then cosine to min_ratio (README, "The loss")."""
    warmup = round(warmup_ratio * total)
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def test_a_changed_learning_rate_and_schedule_take_effect_with_a_line(stopped_run, rank_zero_log):
    root, data, last = stopped_run
    cli_one_thread(base_args(root, data, "--trainer.max_steps", "10", "--model.learning_rate", "1e-3",
                             "--model.min_lr_ratio", "0.5", "--ckpt_path", str(last)))  # fmt: skip
    assert "--model.learning_rate 0.003 -> 0.001: the restored optimizer and schedule use it" in rank_zero_log.text
    assert "--model.min_lr_ratio 0.1 -> 0.5" in rank_zero_log.text
    assert "--trainer.max_steps 4 -> 10: the learning-rate schedule is stretched" in rank_zero_log.text
    lr = logged_metrics(root, "lr")
    for step in range(4, 10):  # warmup 0.05 of 10 steps rounds to 0 (smoke config)
        assert lr[step] == pytest.approx(expected_lr(1e-3, step, 10, 0.05, 0.5), rel=1e-6), step
    optimizer = torch.load(newest_last(root), weights_only=True, map_location="cpu")["optimizer_states"][0]
    assert optimizer["param_groups"][0]["initial_lr"] == pytest.approx(1e-3)


def test_betas_and_weight_decay_take_effect_on_resume(stopped_run):
    root, data, last = stopped_run
    cli_one_thread(base_args(root, data, "--trainer.max_steps", "5", "--model.betas", "[0.5, 0.9]",
                             "--model.weight_decay", "0.1", "--ckpt_path", str(last)))  # fmt: skip
    groups = torch.load(newest_last(root), weights_only=True, map_location="cpu")["optimizer_states"][0]["param_groups"]
    assert [tuple(g["betas"]) for g in groups] == [(0.5, 0.9), (0.5, 0.9)]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]  # biases and norms never decay


REFUSED = [
    pytest.param(["--model.config_overrides", "{n_layer: 3}"], r"--model.config_overrides null -> .*n_layer.*3.*"
                 r"\(the model's shape\)", id="model-shape"),
    pytest.param(["--data.batch_size", "2"], r"--data.batch_size 4 -> 2 \(the batch layout\)", id="batch-size"),
    pytest.param(["--trainer.accumulate_grad_batches", "2"], r"--trainer.accumulate_grad_batches 1 -> 2 \(the batch",
                 id="accumulation"),
    pytest.param(["--data.max_seq_length", "128"], r"--data.max_seq_length 256 -> 128 \(the data's processing\)",
                 id="max-seq-length"),
    pytest.param(["--data.seed", "7"], r"--data.seed 42 -> 7 \(the data order\)", id="data-seed"),
    pytest.param(["--seed_everything", "7"], r"--seed_everything 42 -> 7", id="seed"),
    pytest.param(["--data.prompt_template", "plain"], r"--data.prompt_template alpaca -> plain", id="template"),
    pytest.param(["--data.val_size", "6"], r"--data.val_size 8 -> 6 \(the training rows\)", id="val-size"),
    pytest.param(["--data.format", "messages", "--data.chat_template", "zephyr"],
                 r"--data.format auto -> messages \(the data's processing\); --data.chat_template null -> zephyr",
                 id="chat-format"),
    pytest.param(["OTHER-DATA"], r"--data.dataset .*the same path with other content", id="data-content"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "message"), REFUSED)
def test_a_refused_resume_names_the_flag_and_writes_nothing(in_repo, tmp_path, alpaca_file, rows, capsys, flags,
                                                            message):  # fmt: skip
    """The first run logs to W&B (offline) and CSV; the refused resume must leave every file of it as it was:
    no config.yaml overwritten, no new CSV version, no new W&B run."""
    first = ["fit", *tiny_model_args(tmp_path, alpaca_file), *LEAN_ARGS, "--trainer.max_steps", "3"]
    first[first.index("--trainer.logger") + 1] = wandb_and_csv(tmp_path / "run")
    cli_one_thread(first)
    run = tmp_path / "run"
    last = next(run.rglob("last.ckpt"))
    before = run_files(run)
    assert any(p.name == "config.yaml" for p in before) and list(run.glob("wandb/offline-run-*"))
    if flags == ["OTHER-DATA"]:  # the same file name, other rows
        write_rows(alpaca_file, rows[::-1])
        flags = []
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread([*first, *flags, "--ckpt_path", str(last)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    text = err[err.index("litsft: error:") :]
    assert re.search(message, text) and "Nothing was written" in text, text
    assert "Traceback" not in text and len(text.splitlines()) <= 3
    after = run_files(run)
    assert after == before, sorted(set(after) ^ set(before))


def test_a_moved_data_file_with_the_same_rows_resumes(stopped_run, tmp_path):
    root, data, last = stopped_run
    moved = shutil.copy(data, tmp_path / "moved.json")
    cli = cli_one_thread(
        ["fit", *tiny_model_args(root, moved), *LEAN_ARGS, *csv_logger_args(root), "--trainer.max_steps", "5",
         "--ckpt_path", str(last)]
    )  # fmt: skip
    assert cli.trainer.global_step == 5


# -- NaN at an absurd learning rate: the last finite state, and going on from it with a lower one ----------------


def test_a_nan_stop_keeps_the_last_finite_state_and_a_lower_learning_rate_goes_on(in_repo, tmp_path, alpaca_file,
                                                                                 capsys):  # fmt: skip
    """lr 1e10: step 1 (from the starting weights) is finite, its update makes every weight huge, step 2 is NaN.
    The weights before step 2 already give NaN: the checkpoint must hold those before step 1."""
    args = base_args(tmp_path, alpaca_file, "--trainer.max_steps", "8", "--model.warmup_ratio", "0")
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread([*args, "--model.learning_rate", "1e10"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"non-finite training loss nan.* at step 2 ", err), err
    assert "Saved the last state whose loss was finite, the weights after step 0 (their loss at step 1 was " in err
    first_loss = logged_metrics(tmp_path, "train/loss")[0]
    assert f"their loss at step 1 was {first_loss:.4f}" in err
    checkpoint = next(tmp_path.rglob("nonfinite-step2.ckpt"))

    # its weights give a finite validation loss (those it replaced gave NaN)
    validate = ["validate", *tiny_model_args(tmp_path / "v", alpaca_file), "--ckpt_path", str(checkpoint)]
    cli = cli_one_thread(validate)
    assert math.isfinite(float(cli.trainer.callback_metrics["val/loss"]))

    # and resuming from it with a sane learning rate trains on, finite, at the new rate
    cli_one_thread([*args, "--model.learning_rate", "3e-3", "--ckpt_path", str(checkpoint)])
    losses = logged_metrics(tmp_path, "train/loss")
    assert set(losses) >= set(range(2, 8)) and all(math.isfinite(v) for v in losses.values())
    assert logged_metrics(tmp_path, "lr")[2] == pytest.approx(expected_lr(3e-3, 2, 8, 0.0, 0.1), rel=1e-6)
