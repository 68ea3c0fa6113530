"""Fixtures (built by tests/helpers.py), the offline environment, and the unit tier's guard (tests/tiers.py)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

# Before anything imports datasets/transformers/wandb: they read these at import time.
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    WANDB_MODE="offline",
    WANDB_SILENT="true",
    TOKENIZERS_PARALLELISM="false",
    OMP_NUM_THREADS="1",  # inherited by subprocesses (DDP/FSDP tests run 2 processes on 2 cores)
)

# After the environment above: helpers import torch, lightning and litsft.
from tests import helpers  # noqa: E402
from tests.tiers import (  # noqa: E402
    ONLY_WHEN_NAMED,
    deselect_unnamed,
    is_integration,
    raise_if_refused,
    unit_tier_guard,
)


def pytest_collection_modifyitems(config, items):
    deselect_unnamed(config, items)  # slow and gpu tests only when `-m` names them


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Unit tests (no `integration` mark) run under the guard, from the setup of their first fixture (session
    fixtures are set up before any function-scoped one, so an autouse fixture would come too late) to teardown.
    Slow and gpu tests are never in the unit tier (they run only when `-m` names them): no guard either (torch's
    compiler, in the slow compile tests, starts Python processes of its own)."""
    if is_integration(item) or any(item.get_closest_marker(name) for name in ONLY_WHEN_NAMED):
        return (yield)
    with unit_tier_guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    raise_if_refused(item)  # the guard's refusal fails the test even where the code under test caught it
    return result


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


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(record.getMessage() for record in self.records)


@pytest.fixture
def rank_zero_log():
    """Every line litsft and Lightning print with `rank_zero_info` during the test (`.text`), read from the logger
    they go through. Not `caplog`: Lightning stops its logger propagating when the root logger has no handler at
    import, and whether pytest then attaches caplog's handler depends on the environment (CI saw none of them)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handler = _Records()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def in_repo(monkeypatch):
    """Run from the repo root, as a user does (configs use repo-relative paths)."""
    monkeypatch.chdir(helpers.REPO)
    return helpers.REPO


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return helpers.smoke_tokenizer()


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """The real GPT-2 tokenizer from ../shared/data when present (optional tests skip otherwise)."""
    folder = helpers.SHARED_DATA / "gpt2-tokenizer"
    if not folder.is_dir():
        pytest.skip("../shared/data/gpt2-tokenizer is absent")
    from litsft.data.tokenizer import load_tokenizer

    return load_tokenizer(str(folder))


@pytest.fixture(scope="session")
def pretrained_model(tmp_path_factory) -> Path:
    """A `save_pretrained` folder of a tiny GPT-2 with dropout 0.1 (see `helpers.save_pretrained_tiny_gpt2`)."""
    return helpers.save_pretrained_tiny_gpt2(tmp_path_factory.mktemp("pretrained") / "tiny-gpt2")


@pytest.fixture
def rows() -> list[dict]:
    """Rows of different lengths, with and without input, one with an empty output."""
    from litsft.smoke_assets import synthetic_rows

    data = synthetic_rows(40, seed=1)
    data[3]["output"] = ""
    return data


@pytest.fixture
def alpaca_file(tmp_path, rows) -> Path:
    return helpers.write_rows(tmp_path / "alpaca.json", rows)


@pytest.fixture(scope="session")
def smoke_wandb_run(tmp_path_factory):
    """One smoke run as a new user makes it (W&B offline + CSV, samples on), shared by the tests of issue 3."""
    return helpers.run_smoke_config(tmp_path_factory.mktemp("smoke-wandb"))


@pytest.fixture(scope="session")
def resume_data(tmp_path_factory) -> Path:
    """The rows of the resume and determinism runs (`helpers.write_resume_rows`)."""
    return helpers.write_resume_rows(tmp_path_factory.mktemp("resume-data"))


@pytest.fixture(scope="session")
def resume_reference(tmp_path_factory, resume_data):
    """The uninterrupted run that resumed runs are compared with (`helpers.run_resume_reference`)."""
    return helpers.run_resume_reference(tmp_path_factory.mktemp("reference"), resume_data)
