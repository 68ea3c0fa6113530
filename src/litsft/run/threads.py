"""How many CPU threads torch's intra-op pool uses: no more than the cores other processes leave free.

torch starts one intra-op (OpenMP) thread per physical core, whatever else runs. On a busy 2-core laptop that is a
trap: every parallel op waits for its slowest thread, and a thread that shares its core with another process is
descheduled for whole time slices, so each of the thousands of small ops per step stalls; the smoke run took 10x
longer (1:48-2:45 instead of 17 s with one thread). One thread per *free* core never waits on a descheduled one.

So unless the user chose (OMP_NUM_THREADS / MKL_NUM_THREADS, or torch.set_num_threads before the run), litsft
measures what the other processes use (Linux: /proc/stat minus this process's own CPU time; elsewhere the load
average), uses the cores they leave free (at least 1, at most torch's default, the CPU affinity and the cgroup
quota), and checks again every few seconds while the run goes on, since other jobs come and go. Several litsft
processes side by side thus share the cores instead of each taking all of them. Multi-process runs are left to
Lightning, which sets OMP_NUM_THREADS to cores // processes itself.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def torch_default_threads() -> int:
    """The intra-op thread count torch picks on its own: one per physical core (Apple silicon: performance core)."""
    if sys.platform == "darwin":
        for key in ("hw.perflevel0.physicalcpu", "hw.physicalcpu"):
            try:
                out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=2).stdout
                if out.strip().isdigit() and int(out) > 0:
                    return int(out)
            except (OSError, subprocess.SubprocessError):
                pass
    cores = set()
    for topology in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/topology"):
        try:
            with open(f"{topology}/physical_package_id") as package, open(f"{topology}/core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:
            continue
    return len(cores) or os.cpu_count() or 1


def explicit_setting() -> str | None:
    """The user's own choice of thread count, if any: it always wins."""
    for name in THREAD_ENV:
        if os.environ.get(name, "").strip():
            return f"{name}={os.environ[name]}"
    if torch.get_num_threads() != torch_default_threads():
        return f"torch.set_num_threads({torch.get_num_threads()})"
    return None


def _cgroup_cores() -> float | None:
    """The CPU quota of this process's cgroup in cores (containers: `docker --cpus 2`), or None if unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:  # cgroup v2: "max 100000" or "200000 100000"
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as q, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as p:
            quota, period = int(q.read()), int(p.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def cpu_budget() -> int:
    """The most threads worth using here: torch's default, within the CPU affinity and the cgroup quota."""
    budget = torch_default_threads()
    if hasattr(os, "sched_getaffinity"):
        budget = min(budget, len(os.sched_getaffinity(0)))
    quota = _cgroup_cores()
    if quota is not None:
        budget = min(budget, max(1, int(quota)))
    return max(1, budget)


@dataclass
class CpuSample:
    wall: float
    busy: float | None  # CPU seconds all processes spent (all cores, since boot); None where /proc/stat is absent
    own: float  # CPU seconds this process spent (all its threads)


def sample() -> CpuSample:
    busy = None
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal [guest guest_nice, already counted in user and nice]
        # Steal is time the hypervisor gave this VM's cores to someone else: lost to us as much as a busy process.
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        pass
    times = os.times()
    return CpuSample(time.monotonic(), busy, times.user + times.system)


def others_busy(before: CpuSample, after: CpuSample) -> float:
    """Cores that other processes kept busy between two samples (this process's own threads excluded)."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    own = (after.own - before.own) / wall
    if before.busy is not None and after.busy is not None:
        return max(0.0, (after.busy - before.busy) / wall - own)
    try:
        return max(0.0, os.getloadavg()[0] - own)  # runnable threads, averaged over a minute
    except OSError:
        return 0.0


def choose_threads(budget: int, others: float) -> int:
    """One thread per core the others leave free (rounded), at least one."""
    return max(1, min(budget, round(budget - others)))


class CpuThreadsCallback(Callback):
    """Keeps torch's intra-op threads at the cores other processes leave free (see the module docstring)."""

    def __init__(self, check_every: float = 5.0) -> None:
        self.check_every = check_every
        self.active = False
        self.budget = 1
        self._restore: int | None = None
        self._last = sample()  # made with the CLI, before parsing: the first window spans the start-up
        self._next_check = 0.0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        explicit = explicit_setting()
        self.active = explicit is None and trainer.world_size == 1
        if not self.active:
            return
        self.budget = cpu_budget()
        self._restore = torch.get_num_threads()
        now = sample()
        others = others_busy(self._last, now)
        self._last, self._next_check = now, now.wall + self.check_every
        threads = choose_threads(self.budget, others)
        torch.set_num_threads(threads)
        if threads < self._restore:
            rank_zero_info(
                f"litsft: torch uses {threads} CPU thread(s), not {self._restore}: other processes keep {others:.1f} "
                f"of {self.budget} cores busy (checked again every {self.check_every:g} s; set OMP_NUM_THREADS to "
                "choose yourself)."
            )

    def _check(self) -> None:
        if not self.active or time.monotonic() < self._next_check:
            return
        now = sample()
        others = others_busy(self._last, now)
        self._last, self._next_check = now, now.wall + self.check_every
        threads, current = choose_threads(self.budget, others), torch.get_num_threads()
        if threads != current:
            torch.set_num_threads(threads)
            rank_zero_info(
                f"litsft: CPU threads {current} -> {threads} (other processes now keep {others:.1f} of "
                f"{self.budget} cores busy)."
            )

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self._check()

    def on_validation_batch_end(self, *args, **kwargs) -> None:
        self._check()

    def on_test_batch_end(self, *args, **kwargs) -> None:
        self._check()

    def on_predict_batch_end(self, *args, **kwargs) -> None:
        self._check()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # The next job in this process (a notebook, tests) starts from torch's own default again, which it would
        # otherwise take for the user's explicit setting.
        if self.active and self._restore is not None:
            torch.set_num_threads(self._restore)
        self.active = False
