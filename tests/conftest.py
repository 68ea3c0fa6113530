"""Shared fixtures: a tiny GPT-2 and tokenizer from the repo's smoke assets, small Alpaca files, offline env."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE_MODEL = REPO / "configs" / "smoke" / "tiny-gpt2"
SMOKE_DATA = REPO / "configs" / "smoke" / "alpaca_synthetic.json"
SHARED_DATA = REPO.parent / "shared" / "data"

# Before anything imports datasets/transformers/wandb: they read these at import time.
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    WANDB_MODE="offline",
    WANDB_SILENT="true",
    TOKENIZERS_PARALLELISM="false",
    OMP_NUM_THREADS="1",  # inherited by subprocesses (DDP/FSDP tests run 2 processes on 2 cores)
)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread: the tiny test models gain nothing from more, and on a busy 2-core machine spinning
    OpenMP threads make each step 10-20x slower."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _command_line():
    """Tests call `cli_main(args)` as a user types `python train.py args`: pytest's own arguments are not part of
    that command line (LightningCLI warns when it sees both)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["train.py"])
        yield


@pytest.fixture(autouse=True, scope="session")
def _offline_env(tmp_path_factory):
    """No test touches the network or the user's caches."""
    cache = tmp_path_factory.mktemp("litsft-cache")
    saved = dict(os.environ)
    os.environ["LITSFT_CACHE"] = str(cache)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def in_repo(monkeypatch):
    """Run from the repo root, as a user does (configs use repo-relative paths)."""
    monkeypatch.chdir(REPO)
    return REPO


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from litsft.data.tokenizer import load_tokenizer

    return load_tokenizer(str(SMOKE_MODEL))


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """The real GPT-2 tokenizer from ../shared/data when present (optional tests skip otherwise)."""
    folder = SHARED_DATA / "gpt2-tokenizer"
    if not folder.is_dir():
        pytest.skip("../shared/data/gpt2-tokenizer is absent")
    from litsft.data.tokenizer import load_tokenizer

    return load_tokenizer(str(folder))


def save_pretrained_tiny_gpt2(folder: Path, dropout: float = 0.1, seed: int = 0, **config) -> Path:
    """A tiny GPT-2 (the smoke model's shape and tokenizer) written with `save_pretrained`, as a user's model folder
    is: `from_pretrained` loads it in EVAL mode with the config's dropout (0.1 on attention, residual and
    embeddings) and 1,024 positions, like distilgpt2, so configs/default.yaml runs on it unchanged.
    `--model.random_init` builds its model in train mode and so hides any difference;
    tests of the path users take use this instead."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from litsft.data.tokenizer import load_tokenizer

    hf_config = AutoConfig.from_pretrained(str(SMOKE_MODEL))
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        setattr(hf_config, key, dropout)
    for key, value in {"n_positions": 1024, **config}.items():
        setattr(hf_config, key, value)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(hf_config).save_pretrained(str(folder))
    load_tokenizer(str(SMOKE_MODEL)).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def pretrained_model(tmp_path_factory) -> Path:
    """A `save_pretrained` folder of a tiny GPT-2 with dropout 0.1 (see `save_pretrained_tiny_gpt2`)."""
    return save_pretrained_tiny_gpt2(tmp_path_factory.mktemp("pretrained") / "tiny-gpt2")


def write_rows(path: Path, rows: list[dict], jsonl: bool = False) -> Path:
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows, indent=4))
    return path


@pytest.fixture
def rows() -> list[dict]:
    """Rows of different lengths, with and without input, one with an empty output."""
    from litsft.smoke_assets import synthetic_rows

    data = synthetic_rows(40, seed=1)
    data[3]["output"] = ""
    return data


@pytest.fixture
def alpaca_file(tmp_path, rows) -> Path:
    return write_rows(tmp_path / "alpaca.json", rows)


def tiny_model_args(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    """CLI flags for a fast CPU run of the smoke model on `data`."""
    return [
        "-c", str(REPO / "configs" / "smoke.yaml"),
        "--data.dataset", str(data),
        "--data.val_size", "8",
        "--data.batch_size", "4",
        "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        *extra,
    ]  # fmt: skip


# A fake W&B API key present during the shared smoke run: no file the run writes may contain it.
FAKE_WANDB_KEY = "f" * 8 + "5ec7e7" * 5 + "f" * 2  # 40 characters, like a real key


@pytest.fixture(scope="session")
def smoke_wandb_run(tmp_path_factory):
    """One smoke run as a new user makes it (W&B offline + CSV, samples on), shared by the tests of issue 3."""
    from litsft.cli import cli_main

    run = tmp_path_factory.mktemp("smoke-wandb")
    cwd, key = os.getcwd(), os.environ.get("WANDB_API_KEY")
    os.chdir(REPO)
    os.environ["WANDB_API_KEY"] = FAKE_WANDB_KEY
    try:
        cli = cli_main(
            ["fit", "-c", "configs/smoke.yaml", "--trainer.default_root_dir", str(run),
             "--trainer.logger.init_args.save_dir", str(run), "--trainer.enable_progress_bar", "false"]
        )  # fmt: skip
    finally:
        os.chdir(cwd)
        os.environ.pop("WANDB_API_KEY") if key is None else os.environ.update(WANDB_API_KEY=key)
    return cli, run


# -- issue 4 (reliability): lean runs whose every optimizer step is logged, read back by step ------------------

# Callbacks that cost time and log nothing the reliability tests compare.
LEAN_ARGS = ["--samples.enabled", "false", "--throughput.enabled", "false", "--export.enabled", "false"]


def csv_logger_args(root: Path) -> list[str]:
    """Log every optimizer step to <root>/csv/version_N/metrics.csv, written at once (tests read it mid-run)."""
    return [
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(root),
        "--trainer.logger.name", "csv", "--trainer.logger.flush_logs_every_n_steps", "1",
        "--trainer.log_every_n_steps", "1",
    ]  # fmt: skip


def logged_metrics(root: Path, key: str) -> dict[int, float]:
    """{step: value} of `key` from every metrics.csv under `root` (a resumed run writes a new version)."""
    import csv

    values: dict[int, float] = {}
    for path in sorted(root.rglob("metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get(key):
                    values[int(row["step"])] = float(row[key])
    return values


def cli_one_thread(args: list[str]):
    """`cli_main(args)` on one intra-op thread, as the reliability tests compare runs bit for bit: the tiny model
    gains nothing from a second thread, and on a busy 2-core machine spinning OpenMP threads make each step
    10-20x slower. (Runs compared with each other must use the same thread count: sums split differently round
    differently.)"""
    import torch

    from litsft.cli import cli_main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cli_main(args)
    finally:
        torch.set_num_threads(threads)
