"""Shared fixtures: a tiny GPT-2 and tokenizer from the repo's smoke assets, small Alpaca files, offline env."""

from __future__ import annotations

import json
import os
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
)


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
    from litsft.hf_loading import load_tokenizer

    return load_tokenizer(str(SMOKE_MODEL))


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """The real GPT-2 tokenizer from ../shared/data when present (optional tests skip otherwise)."""
    folder = SHARED_DATA / "gpt2-tokenizer"
    if not folder.is_dir():
        pytest.skip("../shared/data/gpt2-tokenizer is absent")
    from litsft.hf_loading import load_tokenizer

    return load_tokenizer(str(folder))


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
