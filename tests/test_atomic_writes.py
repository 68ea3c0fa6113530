"""Fault injection for writes: a crash or a full disk during a checkpoint save or the export never costs what was
saved before, and a full disk is one message naming the folder and the space needed.

In-process tests inject the fault at the write (a full disk after half the bytes); the slow ones kill a real
process at the moment it opens the checkpoint for writing, and fill a real 3 MB tmpfs."""

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch  # noqa: F401 - before any test captures stderr: its log handler keeps that stream
import pytest
import torch

from tests.helpers import LEAN_ARGS, REPO, cli_one_thread, tiny_model_args


def full_disk_after(monkeypatch, allowed_writes: int):
    """`_write_all` writes half its bytes, then fails with ENOSPC, from the `allowed_writes`+1-th file on."""
    import litsft.atomic_files

    real = litsft.atomic_files._write_all
    calls = {"n": 0}

    def write_all(fd, data):
        calls["n"] += 1
        if calls["n"] <= allowed_writes:
            return real(fd, data)
        real(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(litsft.atomic_files, "_write_all", write_all)
    return calls


def checkpoint_args(tmp_path, data, *extra):
    # a last.ckpt at every optimizer step
    return [
        "fit", *tiny_model_args(tmp_path, data), *LEAN_ARGS, "--trainer.max_steps", "4",
        "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath", str(tmp_path / "ckpt"),
        "--trainer.callbacks.save_last", "true", "--trainer.callbacks.every_n_train_steps", "1",
        "--trainer.callbacks.save_top_k", "0", "--trainer.limit_val_batches", "0", *extra,
    ]  # fmt: skip


@pytest.mark.integration
def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_one(
    in_repo, tmp_path, alpaca_file, monkeypatch, capsys
):
    calls = full_disk_after(monkeypatch, allowed_writes=2)  # config.yaml, last.ckpt of step 1; then full
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread(checkpoint_args(tmp_path, alpaca_file))
    assert exit_.value.code == 1 and calls["n"] == 3
    err = capsys.readouterr().err
    message = err[err.index("litsft: error:") :]  # (stderr before it: captured logging of earlier tests)
    assert "Traceback" not in message and message.count("litsft: error:") == 1
    folder = tmp_path / "ckpt"
    assert f"no space left on the disk of '{folder}'" in message
    assert "writing checkpoint 'last.ckpt' needs " in message and " MB free there" in message
    last = folder / "last.ckpt"
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 1  # the step-1 save, whole
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # no temp file left


def test_a_checkpoint_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
    import litsft.atomic_files
    from litsft.atomic_files import DiskFullError, write_bytes

    target = tmp_path / "last.ckpt"
    target.write_bytes(b"good")
    monkeypatch.setattr(litsft.atomic_files, "free_bytes", lambda folder: 10)
    with pytest.raises(DiskFullError, match=r"needs 0.0 MB, 0.0 MB free there"):
        write_bytes(target, b"x" * 100)
    assert target.read_bytes() == b"good" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_folder_is_replaced_whole(tmp_path):
    from litsft.atomic_files import replace_folder, temporary_folder_beside

    target = tmp_path / "export"
    target.mkdir()
    (target / "old.txt").write_text("old")
    tmp = temporary_folder_beside(target)
    (tmp / "new.txt").write_text("new")
    replace_folder(tmp, target)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == [
        "export"
    ]


@pytest.mark.integration
def test_a_full_disk_during_the_export_keeps_the_previous_export(in_repo, tmp_path, alpaca_file, monkeypatch, capsys):
    args = ["fit", *tiny_model_args(tmp_path, alpaca_file), "--samples.enabled", "false", "--throughput.enabled",
            "false", "--trainer.max_steps", "2"]  # fmt: skip
    cli_one_thread(args)
    export = tmp_path / "run" / "export"
    before = {p.name: p.read_bytes() for p in export.iterdir()}

    from litsft.prompts import PromptTemplate

    def no_space(self, folder):  # the last file of the export: model and tokenizer are written by then
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "prompt_template.json"))

    monkeypatch.setattr(PromptTemplate, "save", no_space)
    with pytest.raises(SystemExit) as exit_:
        cli_one_thread([*args, "--trainer.max_steps", "3"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    err = err[err.index("litsft: error:") :]
    assert "Traceback" not in err and err.count("litsft: error:") == 1
    assert f"no space left on the disk of '{export.parent}'" in err and "writing the export 'export' needs" in err
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before  # the earlier export, untouched
    assert not [p for p in export.parent.iterdir() if p.name.startswith(".export")]  # temp folder removed


# -- real processes ---------------------------------------------------------------------------------------------

KILL_AT_OPEN = """
import os, sys
target_dir, prefixes = os.path.realpath(sys.argv[1]), tuple(sys.argv[2].split(","))

def die_at_write_open(event, args):
    # The process dies the moment it opens, for writing, a file of the target folder (or of a temporary sibling
    # folder) whose name starts with one of the prefixes: as a kill during a save would find it. An audit hook runs
    # just before the open; a file the open truncates is truncated here first, as the open would have done.
    if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path, mode, flags = os.path.realpath(os.fsdecode(args[0])), args[1], args[2] or 0
    writing = any(c in mode for c in "wax+") if mode else bool(flags & (os.O_WRONLY | os.O_RDWR))
    if not writing:
        return
    folder, parent = os.path.dirname(path), os.path.dirname(os.path.dirname(path))
    named = "*" in prefixes or os.path.basename(path).lstrip(".").startswith(prefixes)
    in_target = folder == target_dir and named
    in_sibling = parent == os.path.dirname(target_dir) and os.path.basename(folder).lstrip(".").startswith(prefixes)
    if in_target or in_sibling:
        if os.path.isfile(path) and ((mode and "w" in mode) or flags & os.O_TRUNC):
            os.truncate(path, 0)
        os._exit(137)

sys.addaudithook(die_at_write_open)
from litsft.cli import cli_main
cli_main(sys.argv[3:])
"""


def run_killed_at_open(tmp_path, folder: Path, prefixes: str, args: list[str]) -> int:
    """Run the CLI in a child process that dies at its first write-open of a `prefixes` file in `folder`.

    TMPDIR is put on another filesystem than the run (/dev/shm), as on many clusters: Lightning's own writer
    then copies its temporary file over the checkpoint instead of renaming it."""
    other_fs = Path("/dev/shm")
    if not other_fs.is_dir() or other_fs.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a temp folder on another filesystem (/dev/shm)")
    script = tmp_path / "kill_at_open.py"
    script.write_text(textwrap.dedent(KILL_AT_OPEN))
    tmpdir = Path(os.environ.get("LITSFT_TEST_SHM", other_fs)) / f"litsft-test-{os.getpid()}"
    tmpdir.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    try:
        proc = subprocess.run([sys.executable, str(script), str(folder), prefixes, *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=240)  # fmt: skip
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return proc.returncode


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_process_killed_during_a_checkpoint_save_keeps_the_previous_checkpoint(in_repo, tmp_path, alpaca_file):
    args = checkpoint_args(tmp_path, alpaca_file, "--trainer.max_steps", "2")
    cli_one_thread(args)
    last = tmp_path / "ckpt" / "last.ckpt"
    good = last.read_bytes()
    # the resumed run dies the moment it opens last.ckpt (or a temp file for it) to write step 3's checkpoint
    code = run_killed_at_open(tmp_path, last.parent, "last.ckpt", [*args, "--trainer.max_steps", "4",
                                                                    "--ckpt_path", str(last)])  # fmt: skip
    assert code == 137, "the child was not killed during a save"
    assert last.read_bytes() == good  # Lightning's writer left a 0-byte last.ckpt here
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 2
    cli_one_thread([*args, "--trainer.max_steps", "4", "--ckpt_path", str(last)])  # and resuming works
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 4
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # the killed save's temp file is gone


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_process_killed_during_the_export_keeps_the_previous_export(in_repo, tmp_path, alpaca_file):
    args = ["fit", *tiny_model_args(tmp_path, alpaca_file), "--samples.enabled", "false", "--throughput.enabled",
            "false", "--trainer.max_steps", "2"]  # fmt: skip
    cli_one_thread(args)
    export = tmp_path / "run" / "export"
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    code = run_killed_at_open(tmp_path, export, "*,export", [*args, "--trainer.max_steps", "3"])
    assert code == 137, "the child was not killed during the export"
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before


TMPFS_RUN = """
set -e
mount -t tmpfs -o size=3m tmpfs "$RUN"
set +e
"$PYTHON" train.py "$@" > "$OUT/log" 2>&1
echo $? > "$OUT/rc"
cp -a "$RUN/." "$OUT/run/"
"""


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_full_disk_is_one_message_and_the_earlier_checkpoints_stay_whole(tmp_path, alpaca_file):
    """The run folder is a real 3 MB tmpfs: the first checkpoint (2.2 MB) fits, the next do not."""
    if shutil.which("unshare") is None or subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True
    ).returncode:  # fmt: skip
        pytest.skip("needs `unshare -rm` to mount a private tmpfs")
    run, out = tmp_path / "tmpfs", tmp_path / "out"
    run.mkdir()
    (out / "run").mkdir(parents=True)
    args = [
        "fit", "-c", "configs/smoke.yaml", "--data.dataset", str(alpaca_file), "--data.val_size", "8",
        "--data.batch_size", "4", "--trainer.default_root_dir", str(run), "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", *LEAN_ARGS, "--trainer.max_steps", "6",
        "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath", str(run / "ckpt"),
        "--trainer.callbacks.every_n_train_steps", "2", "--trainer.callbacks.save_top_k", "-1",
        "--trainer.limit_val_batches", "0",  # only this callback saves (no val/loss checkpoints filling the disk)
    ]  # fmt: skip
    env = {**os.environ, "RUN": str(run), "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO / "src")}  # fmt: skip
    subprocess.run(["unshare", "-rm", "sh", "-c", TMPFS_RUN, "sh", *args], cwd=REPO, env=env, timeout=240, check=True)
    log, code = (out / "log").read_text(), int((out / "rc").read_text())
    assert code in (1, 2), log[-2000:]
    assert "Traceback" not in log and log.count("litsft: error:") == 1, log[-2000:]
    message = log[log.index("litsft: error:") :]
    assert f"no space left on the disk of '{run}/" in message and " needs 2." in message, message
    saved = sorted((out / "run" / "ckpt").iterdir())
    assert [p.name for p in saved] == ["epoch=0-step=2.ckpt"]  # the one that fitted; no damaged or temp file
    assert torch.load(saved[0], weights_only=True, map_location="cpu")["global_step"] == 2
