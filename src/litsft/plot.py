"""Draw a run's loss curves (and learning rate) from its CSV metrics: no W&B needed.

    python -m litsft.plot runs/smoke                 # writes runs/smoke/loss.png
    python -m litsft.plot runs/smoke --out curves.png

RUN_DIR is searched for `metrics.csv` (Lightning's CSVLogger, `<save_dir>/csv/version_N/metrics.csv`). The most
recently written one is drawn, together with the older ones it continues (`fit --ckpt_path` starts a new version
whose first step follows the old version's last); a separate run that started again at step 0 is left out.
Top: `train/loss` per step and `val/loss` at each validation. Bottom: `lr`.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from litsft.errors import LitSFTError


def find_metrics(run_dir: str | Path) -> list[Path]:
    """The newest `metrics.csv` under `run_dir`, after the older ones it resumes (or `run_dir` itself, a CSV)."""
    path = Path(run_dir).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise LitSFTError(f"RUN_DIR '{run_dir}' does not exist. Pass a run folder such as runs/smoke.")
    found = sorted(path.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise LitSFTError(
            f"no metrics.csv under '{run_dir}'. Plots need the CSV logger (configs/default.yaml and smoke.yaml "
            "have it); a run with `--trainer.logger false` writes none."
        )
    chain = [found[-1]]
    for older in reversed(found[:-1]):
        first, _ = _step_range(chain[0])
        older_first, _ = _step_range(older)
        # A resumed run starts where a checkpoint left off (after step 0); a new run starts at 0 again.
        if not first or older_first is None or older_first >= first:
            break
        chain.insert(0, older)
    return chain


def _rows(metrics: Path) -> list[dict]:
    try:
        with metrics.open(newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise LitSFTError(f"{metrics}: cannot read it as CSV metrics ({err}).") from None


def _step_range(metrics: Path) -> tuple[int | None, int | None]:
    steps = [int(float(r["step"])) for r in _rows(metrics) if r.get("step") not in (None, "")]
    return (min(steps), max(steps)) if steps else (None, None)


def read_series(files: list[Path], keys: tuple[str, ...]) -> dict[str, tuple[list[int], list[float]]]:
    """(steps, values) of each key present in the CSVs, in order, skipping rows where a key has no value."""
    rows = []
    for i, metrics in enumerate(files):
        # Where a resumed version overlaps the one before it (the steps after its checkpoint), it wins.
        until = _step_range(files[i + 1])[0] if i + 1 < len(files) else None
        rows += [r for r in _rows(metrics) if until is None or r.get("step") in (None, "") or float(r["step"]) < until]
    series: dict[str, tuple[list[int], list[float]]] = {}
    for key in keys:
        points = []
        for row in rows:
            value = row.get(key)
            if value not in (None, "") and row.get("step") not in (None, ""):
                number = float(value)
                if math.isfinite(number):
                    points.append((int(float(row["step"])), number))
        if points:
            series[key] = ([s for s, _ in points], [v for _, v in points])
    return series


def plot(files: list[Path], out: Path) -> Path:
    try:
        import matplotlib
    except ImportError:
        raise LitSFTError("plotting needs matplotlib: pip install matplotlib (or 'litsft[plot]').") from None
    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    series = read_series(files, ("train/loss", "val/loss", "lr"))
    if "train/loss" not in series and "val/loss" not in series:
        raise LitSFTError(f"{files[-1]}: no train/loss or val/loss values to draw (is this a litsft run's CSV?).")
    has_lr = "lr" in series
    fig, axes = plt.subplots(
        2 if has_lr else 1, 1, sharex=True, figsize=(8, 6 if has_lr else 4), squeeze=False,
        gridspec_kw={"height_ratios": [3, 1]} if has_lr else None,
    )  # fmt: skip
    loss_ax = axes[0][0]
    if "train/loss" in series:
        loss_ax.plot(*series["train/loss"], label="train/loss", linewidth=1, alpha=0.8)
    if "val/loss" in series:
        loss_ax.plot(*series["val/loss"], label="val/loss", marker="o", linewidth=2)
    loss_ax.set_ylabel("loss (mean CE per learned token)")
    loss_ax.set_title(" + ".join(str(f.parent) for f in files))
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)
    if has_lr:
        lr_ax = axes[1][0]
        lr_ax.plot(*series["lr"], color="gray")
        lr_ax.set_ylabel("lr")
        lr_ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel("optimizer step")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m litsft.plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", help="A run folder (searched for metrics.csv) or a metrics.csv file.")
    parser.add_argument("--out", default=None, help="PNG to write (default: RUN_DIR/loss.png).")
    args = parser.parse_args(argv)
    try:
        files = find_metrics(args.run_dir)
        base = Path(args.run_dir) if Path(args.run_dir).is_dir() else files[-1].parent
        out = plot(files, Path(args.out) if args.out else base / "loss.png")
    except LitSFTError as err:
        print(f"litsft: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"litsft: plotted {', '.join(map(str, files))} -> {out}")
    return out


if __name__ == "__main__":
    main()
