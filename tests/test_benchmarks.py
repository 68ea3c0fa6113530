"""README's benchmark commands on a clone without ../shared: they fall back and say so, or say what they need."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO

BENCH = REPO / "benchmarks"


def bench_env(tmp_path) -> dict:
    """No ../shared/data (LITSFT_BENCH_DATA at an empty folder), no GPU."""
    return {**os.environ, "LITSFT_BENCH_DATA": str(tmp_path / "no-shared"), "CUDA_VISIBLE_DEVICES": ""}


def load_common(monkeypatch, tmp_path):
    monkeypatch.setenv("LITSFT_BENCH_DATA", str(tmp_path / "no-shared"))
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_shared_data_rows_and_tokenizer_fall_back_with_a_note(monkeypatch, tmp_path):
    common = load_common(monkeypatch, tmp_path)
    rows, note = common.alpaca_rows(5, None)
    assert len(rows) == 5 and "GENERATED" in note and "absent" in note
    folder, note = common.tokenizer_source(None)
    assert folder == str(REPO / "configs" / "smoke" / "tiny-gpt2") and "SMOKE tokenizer" in note
    assert "LITSFT_BENCH_DATA" in note
    with pytest.raises(SystemExit, match="--tokenizer: '.*nope' is not a folder"):
        common.tokenizer_source(str(tmp_path / "nope"))


def test_with_shared_data_the_real_tokenizer_is_used(monkeypatch, tmp_path):
    (tmp_path / "no-shared" / "gpt2-tokenizer").mkdir(parents=True)
    common = load_common(monkeypatch, tmp_path)
    assert common.tokenizer_source(None) == (str(tmp_path / "no-shared" / "gpt2-tokenizer"), "the GPT-2 tokenizer")


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash")
def test_gpu_script_says_it_needs_a_gpu(tmp_path):
    proc = subprocess.run(["bash", str(BENCH / "gpu.sh"), str(tmp_path / "out")], cwd=REPO, env=bench_env(tmp_path),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["throughput.py", "--rows", "48", "--recipes", "raw,litsft"],
        ["tokenize_speed.py", "--rows", "200"],
        ["watching_costs.py", "--val_rows", "16", "--repeats", "1", "--max_new_tokens", "4"],
        ["gpu_check.py", "--dry-run"],
    ],
    ids=lambda c: c[0],
)
def test_each_benchmark_runs_without_shared_data(tmp_path, command):
    args = [*command, "--out", str(tmp_path / "out")] if command[0] == "gpu_check.py" else command
    proc = subprocess.run([sys.executable, str(BENCH / args[0]), *args[1:]], cwd=REPO, env=bench_env(tmp_path),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    if command[0] != "gpu_check.py":  # synthetic rows there by design
        assert "is absent" in proc.stdout
