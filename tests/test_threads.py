"""CPU threads: no more intra-op threads than the cores other processes leave free; the user's choice wins."""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback

from litsft.run import threads
from litsft.run.threads import CpuSample, CpuThreadsCallback, choose_threads, explicit_setting, others_busy
from tests.helpers import tiny_model_args


@pytest.fixture
def torch_default(monkeypatch):
    """As a user's process starts: no OMP_NUM_THREADS (the tests pin it to 1), torch at its own default."""
    for name in threads.THREAD_ENV:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(threads.torch_default_threads())
    yield threads.torch_default_threads()
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("budget", "others", "expected"),
    [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 3.5, 1), (8, 2.4, 6), (1, 0.0, 1)],
)
def test_one_thread_per_core_the_others_leave_free(budget, others, expected):
    assert choose_threads(budget, others) == expected


def test_others_exclude_this_process_own_cpu_time():
    # 10 s in which the machine spent 20 CPU seconds, 5 of them in this process: the others kept 1.5 cores busy
    assert others_busy(CpuSample(0.0, 100.0, 10.0), CpuSample(10.0, 120.0, 15.0)) == pytest.approx(1.5)
    assert others_busy(CpuSample(0.0, 100.0, 10.0), CpuSample(10.0, 104.0, 15.0)) == 0.0  # tick rounding: never < 0


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat")
def test_a_busy_neighbour_is_measured():
    burn = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    neighbour = subprocess.Popen([sys.executable, "-c", burn])
    try:
        time.sleep(0.5)
        before = threads.sample()
        time.sleep(1.5)  # this process sleeps: what is busy is someone else
        with_neighbour = others_busy(before, threads.sample())
    finally:
        neighbour.kill()
        neighbour.wait()
    assert with_neighbour > 0.2  # a core's worth, less what other users of a shared machine take from it


def test_the_users_explicit_setting_wins(torch_default, monkeypatch):
    assert explicit_setting() is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert explicit_setting() == "OMP_NUM_THREADS=3"
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(torch_default + 1)  # torch.set_num_threads before cli_main
    assert explicit_setting() == f"torch.set_num_threads({torch_default + 1})"


def test_load_that_comes_and_goes_during_a_run_is_followed(torch_default, monkeypatch):
    load = iter([0.0, 2.0 * torch_default, 0.0])  # idle at start, then busy, then idle again
    monkeypatch.setattr(threads, "others_busy", lambda before, after: next(load))
    monkeypatch.setattr(threads, "cpu_budget", lambda: 2)
    callback = CpuThreadsCallback(check_every=0.0)
    trainer = SimpleNamespace(world_size=1)
    callback.setup(trainer, None, "fit")
    assert torch.get_num_threads() == 2
    callback.on_train_batch_end()
    assert torch.get_num_threads() == 1
    callback.on_validation_batch_end()
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    callback.teardown(trainer, None, "fit")
    assert torch.get_num_threads() == torch_default  # the next job in this process starts from torch's default


def test_several_processes_are_left_to_lightning(torch_default):
    callback = CpuThreadsCallback()
    callback.setup(SimpleNamespace(world_size=2), None, "fit")
    assert not callback.active and torch.get_num_threads() == torch_default


class RecordThreads(Callback):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_batch_start(self, *args) -> None:
        self.seen.append(torch.get_num_threads())


@pytest.mark.integration
@pytest.mark.parametrize("explicit", [False, True])
def test_cli_runs_on_the_free_cores_unless_told(in_repo, tmp_path, alpaca_file, torch_default, monkeypatch, explicit):
    monkeypatch.setattr(threads, "others_busy", lambda before, after: 5.0)  # every core busy with other work
    if explicit:
        monkeypatch.setenv("OMP_NUM_THREADS", str(torch_default))
    from litsft.cli import cli_main

    args = tiny_model_args(tmp_path, alpaca_file, "--trainer.max_steps", "2", "--samples.enabled", "false")
    cli = cli_main(["fit", *args, "--trainer.callbacks+=tests.test_threads.RecordThreads"])
    assert any(isinstance(c, CpuThreadsCallback) for c in cli.trainer.callbacks)
    record = next(c for c in cli.trainer.callbacks if type(c).__name__ == "RecordThreads")
    assert record.seen == [torch_default if explicit else 1] * 2
    assert torch.get_num_threads() == torch_default  # restored after the run
