"""The smoke run's wall time with the old and the new CPU thread choice, on an idle and on a busy machine.

    python benchmarks/threads.py                  # loads: none, 1 busy core, <cores> other torch programs
    python benchmarks/threads.py --repeats 3 --loads 0,2,late2

Each cell is `python train.py fit -c configs/smoke.yaml` in a fresh process (into a temporary folder), as a user
runs it, with:
  old:  torch's own choice, one intra-op thread per physical core whatever runs beside it (what litsft did before:
        run here as OMP_NUM_THREADS=<that count>, which also turns litsft's choice off);
  new:  litsft's choice (no OMP_NUM_THREADS): the cores other processes leave free, checked again every 5 s;
  1:    OMP_NUM_THREADS=1, for reference.
The load is processes this script starts: "2" = two Python loops burning a core each, started before the run;
"late2" = the same, started 8 s into the run (to show the re-check); "torch2" = two other torch programs with
torch's default threads doing small matrix products in a loop (like someone else's test suite or training run).
Each ends with the run, and on its own after --timeout seconds at the latest. Cells are interleaved (every variant
of every load, then again), so slow drifts of the machine hit all alike; the table gives the median (and range) of
--repeats runs. The machine's own background (processes not started here, e.g. other users) is measured during
each run and printed: numbers taken on a shared machine are not idle numbers.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WANDB_MODE = os.environ.get("WANDB_MODE")  # before common.py disables W&B: the smoke run logs offline, as users see
from common import REPO, load_average, machine  # noqa: E402

sys.path.insert(0, str(REPO / "src"))

# One core busy in a Python loop; or another torch program (torch's default threads, many small ops: a test
# suite or a small training run of someone else), whose OpenMP threads contend with the run's like a real neighbour.
BURN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
BURN_TORCH = (
    "import time, torch\nend = time.monotonic() + {seconds}\na = torch.randn(256, 256)\n"
    "while time.monotonic() < end:\n    for _ in range(50):\n        b = torch.relu(a @ a) + 1\n"
)


def busy_seconds() -> float | None:
    """CPU seconds all processes spent since boot (Linux /proc/stat; None elsewhere)."""
    from litsft.run.threads import sample

    return sample().busy


def children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def start_burners(count: int, seconds: float, kind: str = "") -> list[subprocess.Popen]:
    code = (BURN_TORCH if kind == "torch" else BURN).format(seconds=seconds)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(count)]


def stop(burners: list[subprocess.Popen]) -> None:
    for proc in burners:
        proc.kill()
    for proc in burners:
        proc.wait()


def run_once(variant: str, load: str, default_threads: int, workdir: Path, timeout: float) -> dict:
    kind = load.rstrip("0123456789")  # "", "late" or "torch"
    late, count = kind == "late", int(load[len(kind) :])
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "WANDB_MODE")}
    if WANDB_MODE is not None:
        env["WANDB_MODE"] = WANDB_MODE
    if variant == "old":
        env["OMP_NUM_THREADS"] = str(default_threads)
    elif variant == "1":
        env["OMP_NUM_THREADS"] = "1"
    root = workdir / f"{variant}-{load}-{time.monotonic_ns()}"
    command = [sys.executable, "train.py", "fit", "-c", "configs/smoke.yaml", "--trainer.default_root_dir", str(root),
               "--trainer.enable_progress_bar", "false"]  # fmt: skip
    burners = [] if late else start_burners(count, timeout, kind)
    busy0, own0, start = busy_seconds(), children_seconds(), time.monotonic()
    log = (root.parent / f"{root.name}.log").open("w")
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        if late:
            try:
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                burners = start_burners(count, timeout)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    finally:
        wall = time.monotonic() - start
        stop(burners)
        log.close()
    busy1, own1 = busy_seconds(), children_seconds()
    # What ran beside the run besides our burners: all CPU time minus this script's children (run and burners).
    foreign = (busy1 - busy0 - (own1 - own0)) / wall if busy0 is not None and busy1 is not None else float("nan")
    text = (root.parent / f"{root.name}.log").read_text()
    chosen = [line.split("litsft: ", 1)[1] for line in text.splitlines() if "CPU thread" in line and "litsft:" in line]
    return {"wall": wall, "ok": proc.returncode == 0, "foreign": max(0.0, foreign), "notes": chosen}


def main() -> None:
    from litsft.run.threads import cpu_budget, torch_default_threads

    cores = cpu_budget()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--loads",
        default=f"0,1,torch{cores}",
        help="per row: N busy Python loops; 'torchN': N other torch programs; 'lateN': N loops started after 8 s",
    )
    parser.add_argument("--variants", default="old,new,1")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=400, help="seconds a run (and its load) may take at most")
    args = parser.parse_args()
    loads, variants = args.loads.split(","), args.variants.split(",")
    default_threads = torch_default_threads()
    print(f"machine: {machine()}; torch's default: {default_threads} thread(s); load average {load_average()}")
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="litsft-threads-") as tmp:
        for repeat in range(args.repeats):
            for load in loads:
                for variant in variants if repeat % 2 == 0 else variants[::-1]:
                    r = run_once(variant, load, default_threads, Path(tmp), args.timeout)
                    results.setdefault((load, variant), []).append(r)
                    status = "" if r["ok"] else "  FAILED or timed out"
                    print(
                        f"  run {repeat + 1}: load {load:>5}, {variant:>3}: {r['wall']:6.1f} s (background not ours: "
                        f"{r['foreign']:.2f} cores){status}  {' | '.join(r['notes'])}",
                        flush=True,
                    )
    label = {"old": f"old ({default_threads} thr)", "new": "new (litsft)", "1": "1 thread"}
    print("\nsmoke run wall seconds, median (min-max) of", args.repeats, "runs; load = busy processes started here")
    header = f"{'load':<28}" + "".join(f"{label.get(v, v):>22}" for v in variants)
    if "old" in variants and "new" in variants:
        header += f"{'new vs old':>12}"
    print(header)
    for load in loads:
        cells, median = [], {}
        for variant in variants:
            walls = [r["wall"] for r in results[(load, variant)]]
            median[variant] = statistics.median(walls)
            cells.append(f"{median[variant]:7.1f} ({min(walls):.0f}-{max(walls):.0f})".rjust(22))
        foreign = statistics.mean(r["foreign"] for v in variants for r in results[(load, v)])
        kind = load.rstrip("0123456789")
        what = {"": "busy loops", "late": "loops from 8 s", "torch": "torch programs"}[kind]
        name = f"{load[len(kind) :]} {what} (+{foreign:.1f} bg)"
        line = f"{name:<28}" + "".join(cells)
        if "old" in median and "new" in median:
            line += f"{median['old'] / median['new']:>11.2f}x"
        print(line)
    print("bg = mean cores used meanwhile by processes not started here (other users of the machine).")


if __name__ == "__main__":
    main()
