"""Interrupted runs continue as if they had never stopped: every step's loss after resuming equals the loss of an
uninterrupted run with the same seed (dropout on, gradient accumulation 2, two epochs, validation mid-epoch), also
for stops at an epoch's end (during its validation, in its last step) and in a 2-process DDP run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback

from litsft.data.packing import PackedBatchSampler
from litsft.data.sampler import ResumableBatchSampler, StepBatchSampler
from litsft.errors import LitSFTError
from litsft.run.resume import resume_command
from tests.helpers import (
    LEAN_ARGS,
    REPO,
    RESUME_STEPS_PER_EPOCH,
    cli_one_thread,
    csv_logger_args,
    logged_metrics,
    resume_run_args,
    tiny_model_args,
)


def assert_same_curve(reference, root, resumed_after: int) -> None:
    _, ref_train, ref_val = reference
    train, val = logged_metrics(root, "train/loss"), logged_metrics(root, "val/loss")
    after = {s: v for s, v in train.items() if s >= resumed_after}
    later_val = {s: v for s, v in ref_val.items() if s >= resumed_after}
    assert set(after) == {s for s in ref_train if s >= resumed_after}, "a step is missing or extra"
    assert after == {s: ref_train[s] for s in after}  # exactly equal, not approximately
    # every validation of the reference from there on, none skipped (a stop just before one used to skip it)
    assert {s: v for s, v in val.items() if s >= resumed_after} == later_val


def resumed_step(checkpoint) -> int:
    return torch.load(checkpoint, weights_only=True, map_location="cpu")["global_step"]


@pytest.mark.integration
@pytest.mark.parametrize(
    "checkpoint",
    ["by_step/epoch=0-step=6.ckpt", "by_step/epoch=0-step=12.ckpt", "by_epoch/epoch=0-step=12.ckpt"],
    ids=["mid-epoch-before-validation", "last-step-of-epoch", "epoch-end"],
)
def test_resume_from_a_checkpoint_continues_the_uninterrupted_curve(
    in_repo, tmp_path, resume_data, resume_reference, checkpoint
):
    path = resume_reference[0] / checkpoint
    cli_one_thread(resume_run_args(tmp_path, resume_data, "--ckpt_path", str(path)))
    assert_same_curve(resume_reference, tmp_path, resumed_after=resumed_step(path))


class SignalAt(Callback):
    """Test helper: sends `signum` to this process at validation micro-batch `val_batch` of the first
    validation inside training, `times` times in a row."""

    def __init__(self, signum: int = 2, val_batch: int = 0, times: int = 1) -> None:
        self.signum, self.val_batch, self.times, self.sent = signum, val_batch, times, False

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and batch_idx == self.val_batch and not self.sent:
            self.sent = True
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


@pytest.mark.integration
def test_ctrl_c_during_validation_stops_after_it_and_resumes_exactly(
    in_repo, tmp_path, resume_data, resume_reference, capsys
):
    args = resume_run_args(tmp_path, resume_data, "--trainer.callbacks+=tests.test_resume.SignalAt")
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread(args)
    assert exit_.value.code == 130  # 128 + SIGINT, as a shell reports Ctrl-C
    err = capsys.readouterr().err
    assert "stopped by SIGINT after step 6 (epoch 0, 12 of 24 batches done)" in err  # right after validation
    command = err.split("resume exactly where it stopped with (from ")[1].splitlines()[1].strip()
    assert command.startswith("python train.py fit -c ") and command.count("--ckpt_path") == 1
    checkpoint = command.split("--ckpt_path ")[1]
    assert checkpoint.endswith("last.ckpt") and resumed_step(checkpoint) == 6
    assert logged_metrics(tmp_path, "val/loss") == {5: resume_reference[2][5]}  # the validation it waited for

    cli_one_thread(
        resume_run_args(tmp_path, resume_data, "--ckpt_path", "last")
    )  # the newest last.ckpt of the run's folders
    assert_same_curve(resume_reference, tmp_path, resumed_after=0)


@pytest.mark.integration
def test_second_ctrl_c_stops_at_once_without_a_checkpoint(in_repo, tmp_path, resume_data):
    args = resume_run_args(
        tmp_path, resume_data, "--trainer.callbacks+=tests.test_resume.SignalAt", "--trainer.callbacks.times", "2"
    )
    try:
        with pytest.raises(SystemExit) as exit_:
            cli_one_thread(args)
    finally:  # Lightning ignores SIGINT from its KeyboardInterrupt handling on (a CLI process exits right after)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert exit_.value.code not in (0, None)
    assert not list(tmp_path.rglob("last.ckpt"))


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_sigterm_kills_a_real_cli_run_mid_epoch_and_the_printed_command_resumes_it(
    tmp_path, resume_data, resume_reference
):
    """A real `python train.py fit` process gets SIGTERM part-way through an epoch, from outside."""
    proc = subprocess.Popen(
        [sys.executable, "train.py", *resume_run_args(tmp_path, resume_data)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # as the in-process runs (see cli_one_thread)
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while len(logged_metrics(tmp_path, "train/loss")) < 2:  # a few optimizer steps in: mid-epoch 0
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the run did not start training in time"
            time.sleep(0.02)
        # Freeze it while the signal is sent, so the stop lands mid-epoch however fast this machine is.
        proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert "SIGTERM received: finishing this optimizer step, then saving last.ckpt" in err
    command = err.split("resume exactly where it stopped with (from ")[1].splitlines()[1].strip().split()
    assert command[:3] == ["python", "train.py", "fit"]
    checkpoint = command[-1]
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")["AlpacaDataModule"]["train_batches"]
    assert 0 < state["batches_done"] < state["num_batches"], "the stop was not part-way through an epoch"
    stopped_at = resumed_step(checkpoint)

    assert 0 < stopped_at < len(resume_reference[1])
    cli_one_thread(command[2:])  # the printed command, run from the repo as it says
    assert_same_curve(resume_reference, tmp_path, resumed_after=0)


# -- stops at an epoch's end, and under DDP (issue 13) ------------------------------------------------------------

# Training micro-batches per epoch (2 per optimizer step); validations run after micro-batches 11 and 23.
BATCHES = 2 * RESUME_STEPS_PER_EPOCH


class SignalAtValidation(Callback):
    """Sends `signum` to this process at the first batch of the `occurrence`-th validation inside training."""

    def __init__(self, signum: int = 15, occurrence: int = 2) -> None:
        self.signum, self.occurrence, self.seen = signum, occurrence, 0

    def on_validation_start(self, trainer, pl_module) -> None:
        self.seen += not trainer.sanity_checking

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and self.seen == self.occurrence and batch_idx == 0:
            os.kill(os.getpid(), self.signum)


class SignalAtBatch(Callback):
    """Sends `signum` to this process as training micro-batch `batch` of epoch `epoch` starts."""

    def __init__(self, signum: int = 15, epoch: int = 0, batch: int = BATCHES - 1) -> None:
        self.signum, self.epoch, self.batch, self.sent = signum, epoch, batch, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class PauseInValidation(Callback):
    """Test helper for killed runs: at the `occurrence`-th validation inside training, writes `marker` and takes
    a second per batch, so a signal from outside lands during that validation."""

    def __init__(self, marker: str = "", occurrence: int = 2) -> None:
        self.marker, self.occurrence, self.seen = marker, occurrence, 0

    def on_validation_start(self, trainer, pl_module) -> None:
        self.seen += not trainer.sanity_checking
        if self.seen == self.occurrence and self.marker:
            Path(self.marker).touch()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.seen == self.occurrence and not trainer.sanity_checking:
            time.sleep(1.0)


def assert_whole_curve(reference, root) -> None:
    """Every step's train/loss and every validation's val/loss, at the same steps, bit for bit."""
    _, ref_train, ref_val = reference
    assert logged_metrics(root, "val/loss") == ref_val
    assert logged_metrics(root, "train/loss") == ref_train


CALLBACK = "--trainer.callbacks+=tests.test_resume."
STOPS = [
    pytest.param([CALLBACK + "SignalAtValidation"], "step 12 (epoch 1, 0 of", id="during-epoch-end-validation"),
    pytest.param([CALLBACK + "SignalAtBatch"], "step 12 (epoch 1, 0 of", id="last-micro-batch-of-epoch"),
    pytest.param([CALLBACK + "SignalAtBatch", "--trainer.callbacks.batch", str(BATCHES - 2)],
                 "step 12 (epoch 1, 0 of", id="last-step-of-epoch"),
    pytest.param([CALLBACK + "SignalAtBatch", "--trainer.callbacks.batch", "10"],
                 "step 6 (epoch 0, 12 of", id="step-before-mid-epoch-validation"),
    pytest.param([CALLBACK + "SignalAtBatch", "--trainer.callbacks.epoch", "1"], "step 24 (epoch 2, 0 of",
                 id="last-batch-of-training"),
]  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize(("flags", "stopped"), STOPS)
def test_a_stop_at_an_epoch_end_resumes_exactly(
    in_repo, tmp_path, resume_data, resume_reference, capsys, flags, stopped
):
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread(resume_run_args(tmp_path, resume_data, *flags))
    assert exit_.value.code == 143
    assert f"stopped by SIGTERM after {stopped}" in capsys.readouterr().err
    cli_one_thread(resume_run_args(tmp_path, resume_data, "--ckpt_path", "last"))
    assert_whole_curve(resume_reference, tmp_path)


def wait_for(condition, proc, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"{what} did not happen in time"
        time.sleep(0.02)


def sigterm_from_outside(proc) -> str:
    proc.send_signal(signal.SIGSTOP)  # frozen while the signal is sent, however fast the machine is
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    return err


def start(args, env=None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigterm_to_a_real_run_during_the_epoch_end_validation_resumes_exactly(tmp_path, resume_data, resume_reference):
    marker = tmp_path / "in-validation"
    proc = start(
        resume_run_args(
            tmp_path, resume_data, CALLBACK + "PauseInValidation", "--trainer.callbacks.marker", str(marker)
        )
    )
    try:
        wait_for(marker.exists, proc, 120, "the epoch-end validation")
        err = sigterm_from_outside(proc)
    finally:
        proc.kill()
    assert "stopped by SIGTERM after step 12 (epoch 1, 0 of 24 batches done)" in err, err
    cli_one_thread(
        resume_run_args(tmp_path, resume_data, "--ckpt_path", "last")
    )  # (in-process; the pause only slows it)
    assert_whole_curve(resume_reference, tmp_path)


def ddp_args(root, data, *extra) -> list[str]:
    # 96 training rows / (4 rows x 2 ranks) = 12 micro-batches per epoch, accumulate 2: 6 steps per epoch
    return ["fit", *tiny_model_args(root, data), *LEAN_ARGS, *csv_logger_args(root), "-c", "configs/strategy/ddp.yaml",
            "--trainer.devices", "2", "--trainer.max_epochs", "2", "--trainer.accumulate_grad_batches", "2",
            *extra]  # fmt: skip


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigterm_to_a_two_process_ddp_run_resumes_exactly(tmp_path, resume_data):
    """Dropout differs per rank (its batches have other shapes): each rank's random state must come back."""
    env = {"LITSFT_CACHE": str(tmp_path / "cache")}
    ref = tmp_path / "reference"
    done = subprocess.run([sys.executable, "train.py", *ddp_args(ref, resume_data)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ref_train, ref_val = logged_metrics(ref, "train/loss"), logged_metrics(ref, "val/loss")
    assert len(ref_train) == 12

    run = tmp_path / "run"
    proc = start(ddp_args(run, resume_data), env)
    try:
        wait_for(lambda: len(logged_metrics(run, "train/loss")) >= 2, proc, 150, "training")
        err = sigterm_from_outside(proc)
    finally:
        proc.kill()
    checkpoint = err.split("resume exactly where it stopped with (from ")[1].splitlines()[1].split()[-1]
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    assert 0 < state["AlpacaDataModule"]["train_batches"]["batches_done"] < 12, "not stopped mid-epoch"
    resumed = subprocess.run([sys.executable, "train.py", *ddp_args(run, resume_data, "--ckpt_path", checkpoint)],
                             cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=180)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert logged_metrics(run, "train/loss") == ref_train  # every step, bit for bit
    assert logged_metrics(run, "val/loss") == ref_val


# -- the sampler's position, on its own ---------------------------------------------------------------------


def make_sampler(cls=StepBatchSampler, n=103, **kw) -> ResumableBatchSampler:
    rng = np.random.default_rng(0)
    lengths, labels = rng.integers(5, 200, size=n), rng.integers(1, 50, size=n)
    if cls is PackedBatchSampler:
        kw.setdefault("capacity", 256)
    return ResumableBatchSampler(cls(lengths, labels, batch_size=4, accumulate=2, seed=11, **kw))


def keys(batches) -> list[list[int]]:
    return [[k.index for k in b] for b in batches]


@pytest.mark.parametrize("cls", [StepBatchSampler, PackedBatchSampler])
def test_sampler_resumes_at_the_next_batch_of_the_same_epoch(cls):
    uninterrupted = make_sampler(cls)
    uninterrupted.set_epoch(3)
    expected = keys(uninterrupted)
    fresh = make_sampler(cls)
    fresh.load_state_dict(uninterrupted.state_dict(epoch=3, batches_done=5))
    assert keys(fresh) == expected[5:]  # the next batch, not a skip through the seen ones' data
    assert keys(fresh) == expected  # and the next epoch iteration starts at its beginning
    assert len(fresh) == len(expected)  # Lightning counts the whole epoch


def test_each_epoch_has_its_own_order_through_the_dataloader_attribute_lightning_uses():
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DataLoader

    sampler = make_sampler()
    loader = DataLoader(list(range(103)), batch_sampler=sampler, collate_fn=lambda rows: rows)
    _set_sampler_epoch(loader, 0)
    first = keys(sampler)
    _set_sampler_epoch(loader, 1)
    assert keys(sampler) != first


@pytest.mark.parametrize(
    ("change", "message"),
    [({"n": 104}, "rows 103 -> 104"), ({"seed": 12}, "seed 11 -> 12"), ({"batch_size": 8}, "batch_size 4 -> 8")],
)
def test_sampler_refuses_a_position_from_another_order(change, message):
    state = make_sampler().state_dict(epoch=0, batches_done=3)
    n = change.pop("n", 103)
    rng = np.random.default_rng(0)
    other = ResumableBatchSampler(
        StepBatchSampler(
            rng.integers(5, 200, size=n), rng.integers(1, 50, size=n), **({"batch_size": 4, "seed": 11} | change)
        )
    )
    with pytest.raises(LitSFTError, match=message):
        other.load_state_dict(state)


def test_sampler_warns_when_a_position_is_inside_an_optimizer_step():
    state = make_sampler().state_dict(epoch=0, batches_done=3)  # accumulate 2: micro-batch 3 is mid-step
    with pytest.warns(UserWarning, match="in the middle of an optimizer step"):
        make_sampler().load_state_dict(state)


def test_resume_command_replaces_any_earlier_checkpoint_flag():
    args = ["fit", "-c", "my config.yaml", "--ckpt_path", "old.ckpt", "--ckpt_path=older.ckpt", "--x", "1"]
    assert resume_command(args, "/r/last.ckpt") == (
        "python train.py fit -c 'my config.yaml' --x 1 --ckpt_path /r/last.ckpt"
    )
