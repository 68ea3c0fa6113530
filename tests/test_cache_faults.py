"""The tokenized cache checks itself on load: a damaged or partial entry is rebuilt with a warning (and training
sees exactly the rows a fresh tokenization gives); an unusable cache folder is one message naming it and
LITSFT_CACHE."""

import contextlib
import json
import os
import shutil
import subprocess

import lightning.pytorch  # noqa: F401 - before any test captures stderr: its log handler keeps that stream
import numpy as np
import pytest

from litsft.data.datamodule import AlpacaDataModule
from tests.helpers import LEAN_ARGS, cli_one_thread, tiny_datamodule, tiny_model_args


def datamodule(data, cache) -> AlpacaDataModule:
    return tiny_datamodule(data, cache, max_seq_length=256)


def rows_of(dm: AlpacaDataModule) -> dict[int, list[int]]:
    return {r["row"]: list(r["input_ids"]) for r in [*dm.train_rows, *dm.val_rows]}


def arrow_file(entry):
    return next((entry / "dataset").glob("*.arrow"))


def truncate(entry) -> None:
    path = arrow_file(entry)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def rewrite_token_ids(entry) -> None:
    """Every token id changed in place: the file stays well-formed Arrow of the same size (bit rot, a bad copy)."""
    import pyarrow as pa

    path = arrow_file(entry)
    data = bytearray(path.read_bytes())
    with pa.memory_map(str(path)) as source:
        chunks = pa.ipc.open_stream(source).read_all().column("input_ids").chunks
    for chunk in chunks:
        values = chunk.flatten().to_numpy()
        start = data.find(values.tobytes())
        assert start >= 0, "the token ids are not stored as one plain buffer"
        data[start : start + values.nbytes] = ((values + 1) % 900).astype(values.dtype).tobytes()
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated-arrow": truncate,
    "token-ids-rewritten": rewrite_token_ids,
    "corrupt-counts": lambda entry: (entry / "counts.json").write_text('{"rows": 40, "kept":'),
    "missing-dataset-folder": lambda entry: shutil.rmtree(entry / "dataset"),
    "missing-manifest": lambda entry: (entry / "manifest.json").unlink(),  # a partial entry, e.g. an old writer's
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cache_entry_is_rebuilt_with_a_warning(tmp_path, alpaca_file, damage):
    fresh = datamodule(alpaca_file, tmp_path / "cache")
    fresh.setup("fit")
    expected = rows_of(fresh)
    entry = next(p for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
    DAMAGE[damage](entry)
    again = datamodule(alpaca_file, tmp_path / "cache")
    with pytest.warns(UserWarning, match=rf"cache entry {entry} is damaged .*rebuilding it"):
        again.prepare_data()
    again.setup("fit")
    assert rows_of(again) == expected  # the same tokens as a fresh tokenization, not the damaged ones
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [entry.name]  # no leftovers


def test_a_whole_entry_is_used_without_a_warning_and_its_check_is_cheap(tmp_path, alpaca_file, recwarn):
    datamodule(alpaca_file, tmp_path / "cache").setup("fit")
    dm = datamodule(alpaca_file, tmp_path / "cache")
    dm.setup("fit")
    assert not [w for w in recwarn if "cache" in str(w.message)]
    manifest = json.loads((dm._cache()[0].path / "manifest.json").read_text())
    assert {"dataset/dataset_info.json", "counts.json", "settings.json"} <= set(manifest["files"])
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in manifest["files"].values())


@pytest.mark.integration
def test_a_damaged_entry_is_rebuilt_in_a_real_run(in_repo, tmp_path, alpaca_file):
    args = ["fit", *tiny_model_args(tmp_path, alpaca_file), *LEAN_ARGS, "--trainer.max_steps", "1",
            "--data.cache_dir", str(tmp_path / "cache")]  # fmt: skip
    first = cli_one_thread(args)
    expected = rows_of(first.datamodule)
    entry = next((tmp_path / "cache").iterdir())
    rewrite_token_ids(entry)
    with pytest.warns(UserWarning, match="is damaged"):
        again = cli_one_thread(args)
    assert rows_of(again.datamodule) == expected


@contextlib.contextmanager
def read_only(folder):
    """`folder` cannot be written to, even by root (chattr +i), or the test is skipped."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root on a filesystem without chattr +i: no way to make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def unusable_cache(tmp_path, capsys, alpaca_file, env_cache) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread(["fit", *tiny_model_args(tmp_path, alpaca_file), *LEAN_ARGS])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    message = err[err.index("litsft: error:") :]
    assert "Traceback" not in message and len(message.splitlines()) <= 3
    assert f"the tokenized-data cache folder '{env_cache}' cannot be used" in message and "LITSFT_CACHE" in message
    assert not (tmp_path / "run").exists()
    return message


@pytest.mark.integration
def test_a_cache_path_that_is_a_file_is_one_message(in_repo, tmp_path, alpaca_file, capsys, monkeypatch):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    monkeypatch.setenv("LITSFT_CACHE", str(cache))
    unusable_cache(tmp_path, capsys, alpaca_file, cache)


@pytest.mark.integration
def test_a_read_only_cache_folder_is_one_message(in_repo, tmp_path, alpaca_file, capsys, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("LITSFT_CACHE", str(cache))
    with read_only(cache):
        unusable_cache(tmp_path, capsys, alpaca_file, cache)


@pytest.mark.integration
def test_a_whole_entry_in_a_read_only_cache_folder_is_used(in_repo, tmp_path, alpaca_file, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LITSFT_CACHE", str(cache))
    datamodule(alpaca_file, cache).setup("fit")
    with read_only(cache):
        cli = cli_one_thread(["fit", *tiny_model_args(tmp_path, alpaca_file), *LEAN_ARGS, "--trainer.max_steps", "1"])
    assert cli.trainer.global_step == 1 and np.asarray(cli.datamodule.train_rows["row"][:]).size == 32
