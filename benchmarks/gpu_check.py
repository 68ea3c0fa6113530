"""Scale-out GPU check, one prepared script for one CUDA GPU (about 3 minutes on an H100):

    python benchmarks/gpu_check.py --out /tmp/gpu_check          # on the GPU machine
    python benchmarks/gpu_check.py --dry-run                      # here: tiny model, CPU, to check the script

Runs, on a distilgpt2-shaped model with random weights (the hub is out of reach there too) and synthetic
Alpaca-format rows: (1) bf16-mixed fit for a few hundred steps with the sample callback and the export;
(2) the same under FSDP2 with one device. Prints, per run: supervised and total tokens/s, MFU, peak GPU
memory, the final losses, and whether the export loads with transformers.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from litsft.cli import cli_main  # noqa: E402
from litsft.smoke_assets import synthetic_rows  # noqa: E402

DISTILGPT2 = "{n_layer: 6, n_embd: 768, n_head: 12, n_positions: 1024, vocab_size: 50257}"
TINY = "{n_layer: 2, n_embd: 64, n_head: 2}"


def last(rows: list[dict], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key)]
    return values[-1] if values else None


def run(name: str, out: Path, data: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    root = out / name
    flags = [
        "fit", "-c", str(REPO / "configs" / "default.yaml"), *extra,
        "--model.model_name_or_path", str(REPO / "configs" / "smoke" / "tiny-gpt2"), "--model.random_init", "true",
        "--model.config_overrides", TINY if args.dry_run else DISTILGPT2,
        "--data.dataset", str(data), "--data.val_size", "256", "--data.batch_size", str(args.batch_size),
        "--data.max_seq_length", "256", "--trainer.accumulate_grad_batches", "1",
        "--trainer.max_steps", str(args.steps), "--trainer.val_check_interval", str(args.steps // 2),
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--trainer.logger", f"[{{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {root}}}}}]",
        "--samples.every_n_steps", str(args.steps // 2), "--samples.max_new_tokens", "32",
    ]  # fmt: skip
    if args.dry_run:
        flags += ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true"]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    cli = cli_main(flags)
    seconds = time.perf_counter() - start
    rows = list(csv.DictReader(next(root.rglob("metrics.csv")).open()))
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(str(root / "export"))
    return {
        "run": name,
        "steps": cli.trainer.global_step,
        "wall_s": round(seconds, 1),
        "sup_tok_s": last(rows, "train/tokens_per_sec"),
        "tot_tok_s": last(rows, "train/tokens_per_sec_total"),
        "mfu": last(rows, "train/mfu"),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "train_loss": last(rows, "train/loss"),
        "val_loss": last(rows, "val/loss"),
        "export_params_m": round(sum(p.numel() for p in exported.parameters()) / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/litsft-gpu-check")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dry-run", action="store_true", help="tiny model on CPU, to check the script itself")
    args = parser.parse_args()
    if args.dry_run:
        args.steps, args.rows, args.batch_size = min(args.steps, 10), min(args.rows, 600), 8
    elif not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU here; use --dry-run to check the script on CPU.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "rows.json"
    data.write_text(json.dumps(synthetic_rows(args.rows, seed=3)))
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    results = [
        run("single_bf16", out, data, args, []),
        run(
            "fsdp2_1dev",
            out,
            data,
            args,
            ["-c", str(REPO / "configs" / "strategy" / "fsdp.yaml"), "--trainer.devices", "1"],
        ),
    ]
    keys = list(results[0])
    print("\n" + " | ".join(f"{k:>14}" for k in keys))
    for r in results:
        print(" | ".join(f"{'' if r[k] is None else r[k]!s:>14}" for k in keys))
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
