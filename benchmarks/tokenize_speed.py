"""How fast litsft turns 52,000 Alpaca rows into training batches: cold (tokenize and cache) and warm (cache hit).

    python benchmarks/tokenize_speed.py                 # 52,000 rows: the real 26,101 rows repeated, GPT-2 tokenizer
    python benchmarks/tokenize_speed.py --rows 10000 --template plain

Each phase runs in a fresh process with the same cache folder: the first finds it empty (cold: read and check
the file, tokenize, write the cache), the second finds the entry (warm). The seconds are those of
`prepare_data()` + `setup("fit")` + building the training loader, timed inside the process (the 6-7 s of
importing torch/transformers/lightning is listed apart). Targets: cold < 20 s, warm < 3 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alpaca_rows, load_average, machine, run_child, tokenizer_source, write_rows  # noqa: E402

TARGETS = {"cold": 20.0, "warm": 3.0}


def phase(args) -> None:
    """In the child: time the data side of a training start, print one JSON line."""
    start = time.perf_counter()
    from litsft.data.datamodule import AlpacaDataModule

    imported = time.perf_counter()
    dm = AlpacaDataModule(
        dataset=args.file, tokenizer_name_or_path=args.tokenizer, prompt_template=args.template,
        max_seq_length=args.max_seq_length, val_size=0.02, cache_dir=args.cache, num_workers=0,
        tokenize_num_proc=args.num_proc,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    prepared = time.perf_counter()
    loader = dm.train_dataloader()
    batches = len(loader)
    done = time.perf_counter()
    # The cache entry's self-check (sizes + SHA-256 of its files), part of `prepare_data` above; timed again alone.
    from litsft.data.cache import TokenizedCache

    entry = TokenizedCache(args.cache, {})
    entry.path = next(p for p in Path(args.cache).iterdir() if not p.name.startswith("."))
    check_start = time.perf_counter()
    assert entry.problem() is None
    check_s = time.perf_counter() - check_start
    print(
        json.dumps(
            {
                "import_s": imported - start,
                "prepare_setup_s": prepared - imported,
                "loader_s": done - prepared,
                "seconds": done - imported,
                "check_s": check_s,
                "train_rows": len(dm.train_rows),
                "batches": batches,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=52_000)
    parser.add_argument("--data", type=Path, default=None, help="Alpaca JSON (default: ../shared/data's real rows)")
    parser.add_argument("--tokenizer", default=None, help="default: ../shared's GPT-2 tokenizer, else the smoke one")
    parser.add_argument("--template", default="alpaca")
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--num-proc", type=int, default=None, help="--data.tokenize_num_proc")
    parser.add_argument("--phase", choices=["cold", "warm"], help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase(args)
        return

    tokenizer, tokenizer_note = tokenizer_source(args.tokenizer)
    with tempfile.TemporaryDirectory(prefix="litsft-tokbench-") as tmp:
        rows, note = alpaca_rows(args.rows, args.data)
        data = write_rows(rows, Path(tmp) / "alpaca_rows.json")
        child = [__file__, "--file", str(data), "--cache", str(Path(tmp) / "cache"), "--tokenizer", tokenizer]
        child += ["--template", args.template, "--max-seq-length", str(args.max_seq_length)]
        if args.num_proc:
            child += ["--num-proc", str(args.num_proc)]
        print(f"machine: {machine()}; load average before: {load_average()}")
        print(f"data: {args.rows:,} rows ({note}), template {args.template}, {tokenizer_note}")
        print(f"{'phase':<6} {'seconds':>8} {'target':>7} {'ok':>4}   (prepare+setup / loader / imports apart)")
        for name in ("cold", "warm"):
            result = run_child([*child, "--phase", name], timeout=600)
            ok = "yes" if result["seconds"] < TARGETS[name] else "NO"
            print(
                f"{name:<6} {result['seconds']:>8.2f} {'< ' + str(int(TARGETS[name])):>7} {ok:>4}   "
                f"({result['prepare_setup_s']:.2f} / {result['loader_s']:.2f} / {result['import_s']:.1f} s; "
                f"{result['train_rows']:,} train rows; cache check {result['check_s']:.3f} s)"
            )
        print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
