"""What the benchmarks share: where the real data is, generated rows when it is absent, machine facts."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Real Alpaca rows and the real GPT-2 tokenizer (a project machine's ../shared/data; LITSFT_BENCH_DATA elsewhere).
# Without them every benchmark still runs, on generated rows and the smoke run's tokenizer, and says so.
SHARED_DATA = Path(os.environ.get("LITSFT_BENCH_DATA") or REPO.parent / "shared" / "data")
REAL_ROWS = SHARED_DATA / "alpaca" / "alpaca_data_subset_26101.json"
REAL_TOKENIZER = SHARED_DATA / "gpt2-tokenizer"
SMOKE_TOKENIZER = REPO / "configs" / "smoke" / "tiny-gpt2"
GPT2_VOCAB = 50_257

# Offline and quiet, before transformers/datasets are imported (here or in a child process).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "true",
    "TRANSFORMERS_VERBOSITY": "error",
}
os.environ.update({k: v for k, v in OFFLINE_ENV.items() if k not in os.environ})


def alpaca_rows(n: int, source: Path | None) -> tuple[list[dict], str]:
    """`n` Alpaca rows: the real ones (repeated when fewer than `n`), else generated; and a note saying which."""
    source = source or REAL_ROWS
    if source.is_file():
        real = json.loads(source.read_text())
        rows = [real[i % len(real)] for i in range(n)]
        repeats = f", repeated x{n / len(real):.2f}" if n > len(real) else ""
        return rows, f"real Alpaca rows from {source.name}{repeats}"
    sys.path.insert(0, str(REPO / "src"))
    from litsft.smoke_assets import synthetic_rows

    return synthetic_rows(n, seed=0), f"GENERATED rows ({source} is absent): numbers not comparable to real data"


def tokenizer_source(requested: str | None) -> tuple[str, str]:
    """(tokenizer folder, note): `requested`, else the real GPT-2 tokenizer, else the smoke run's (said in the note).

    A requested folder that does not exist stops the benchmark with a message instead of a traceback.
    """
    if requested:
        if not Path(requested).expanduser().is_dir():
            raise SystemExit(f"--tokenizer: '{requested}' is not a folder (a tokenizer saved with save_pretrained).")
        return requested, Path(requested).name
    if REAL_TOKENIZER.is_dir():
        return str(REAL_TOKENIZER), "the GPT-2 tokenizer"
    return str(SMOKE_TOKENIZER), (
        f"the SMOKE tokenizer ({REAL_TOKENIZER} is absent; set LITSFT_BENCH_DATA to a folder holding gpt2-tokenizer/ "
        "and alpaca/ for the README's numbers): token counts not comparable to the real GPT-2 tokenizer's"
    )


def write_rows(rows: list[dict], path: Path) -> Path:
    path.write_text(json.dumps(rows))
    return path


def machine() -> str:
    """One line naming the machine: CPU model and cores, or the GPU."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, no GPU (torch {torch.__version__}, {torch.get_num_threads()} threads)"


def load_average() -> str:
    """The 1/5/15-minute load: other processes on the machine slow every row of the table alike."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run_child(args: list[str], timeout: float) -> dict:
    """Run `python <args>` in a fresh process; its last stdout line is a JSON result."""
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ}
    )
    if proc.returncode != 0:
        output = proc.stdout[-3000:] + proc.stderr[-3000:]
        raise RuntimeError(f"{' '.join(args[:3])} failed ({proc.returncode}):\n{output}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
