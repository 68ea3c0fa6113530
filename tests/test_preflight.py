"""Offline: decided once, no hub retries, every problem of the run in one message, no advice to set what is set.

No test here reaches a real network: the hub endpoint is a closed port on 127.0.0.1 (HF_ENDPOINT), or the tests'
HF_HUB_OFFLINE=1 (conftest) holds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from litsft import hub
from litsft.cli import cli_main
from tests.helpers import REPO, SMOKE_MODEL


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_error(capsys, args) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli_main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("litsft: error:") == 1 and "Traceback" not in err
    return err


@pytest.mark.integration
def test_the_default_job_offline_names_model_and_dataset_at_once(in_repo, tmp_path, capsys):
    """`python train.py fit` with HF_HUB_OFFLINE=1 set: both missing pieces in one message, before anything is
    written, and no suggestion to set HF_HUB_OFFLINE=1."""
    err = run_error(capsys, ["fit", "--trainer.default_root_dir", str(tmp_path / "run")])
    assert "Working offline (HF_HUB_OFFLINE=1 is set)" in err and "2 problems stop this run" in err
    assert "--model.model_name_or_path: model 'distilgpt2' is not in the Hugging Face cache" in err
    assert "--data.dataset: dataset 'tatsu-lab/alpaca' is not in the datasets cache" in err
    assert "HF_HUB_OFFLINE=1 to" not in err and "set HF_HUB_OFFLINE" not in err
    assert "configs/smoke.yaml" in err  # what does work offline
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
def test_a_local_model_with_a_hub_dataset_reports_the_length_too(in_repo, tmp_path, capsys):
    """The issue's second and third rounds (max_seq_length, then the dataset) in one."""
    err = run_error(
        capsys,
        ["fit", "--model.model_name_or_path", str(SMOKE_MODEL), "--model.random_init", "true",
         "--trainer.default_root_dir", str(tmp_path / "run")],
    )  # fmt: skip
    assert "2 problems" in err and "dataset 'tatsu-lab/alpaca'" in err
    assert "--data.max_seq_length=512 exceeds the context of" in err and "(256 positions)" in err


@pytest.mark.integration
def test_a_missing_local_file_and_a_missing_model_come_together(in_repo, tmp_path, capsys):
    err = run_error(
        capsys,
        ["fit", "-c", "configs/smoke.yaml", "--model.model_name_or_path", str(tmp_path / "nope"),
         "--data.dataset", str(tmp_path / "rows.json"), "--trainer.default_root_dir", str(tmp_path / "run")],
    )  # fmt: skip
    assert "2 problems" in err and "folder" in err and "rows.json' does not exist" in err


@pytest.mark.integration
def test_one_problem_of_a_run_needing_no_hub_is_one_plain_message(in_repo, tmp_path, capsys):
    err = run_error(capsys, ["fit", "-c", "configs/smoke.yaml", "--data.max_seq_length", "4096"])
    assert "problems" not in err and "Working offline" not in err and "max_seq_length=4096 exceeds" in err


def test_unreachable_and_reachable_endpoints():
    assert "Connection refused" in hub.unreachable(f"http://127.0.0.1:{closed_port()}", timeout=2.0)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert hub.unreachable(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=2.0) is None


def test_a_proxy_is_probed_instead_of_the_hub(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert hub._connect_target("https://huggingface.co") == ("proxy.example", 3128)
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert hub._connect_target("https://huggingface.co") == ("huggingface.co", 443)


def test_no_probe_when_the_run_needs_nothing_from_the_hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_detected", None)
    monkeypatch.setattr(hub, "unreachable", lambda *a, **k: pytest.fail("probed the hub"))
    assert hub.check_hub([str(SMOKE_MODEL), str(tmp_path / "data.json"), None]) is None


def fake_hub_cache(root, repo_id: str) -> None:
    """The hub cache layout `hf download` leaves: refs/main -> snapshots/<commit>/ files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in SMOKE_MODEL.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_unreachable_hub_is_detected_once_and_the_cache_still_serves(tmp_path):
    """A real `python train.py fit` process, HF_HUB_OFFLINE unset, the hub endpoint unreachable (a closed local
    port): no visible retries; the cached model loads at once; the dataset and the length are both reported."""
    fake_hub_cache(tmp_path / "hub", "litsft-test/tiny-gpt2")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HUB_CACHE=str(tmp_path / "hub"),
        HF_DATASETS_CACHE=str(tmp_path / "datasets"), WANDB_MODE="offline",
        WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}", PYTHONPATH=str(REPO / "src"),
    )  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "train.py", "fit", "--model.model_name_or_path", "litsft-test/tiny-gpt2",
         "--model.random_init", "true", "--trainer.default_root_dir", str(tmp_path / "run")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "Retrying" not in output and "Traceback" not in output
    assert output.count("litsft: error:") == 1 and "cannot be reached" in output and "Connection refused" in output
    assert "2 problems" in output and "dataset 'tatsu-lab/alpaca'" in output and "(256 positions)" in output
    assert "litsft-test/tiny-gpt2' is not in" not in output  # the cached model was found, without the network
    assert not (tmp_path / "run").exists()
    print(json.dumps({"offline_fail_seconds": round(elapsed, 1)}))  # imports dominate; the hub's retries took 23 s
