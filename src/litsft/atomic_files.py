"""Files and folders written whole or not at all, and a full disk said in one sentence.

A file is written to a temporary name beside its target (same folder, so same filesystem), flushed and
fsynced, then renamed over the target, and the folder is fsynced so the rename itself survives a power cut.
A crash or a kill at any moment leaves either the old file or the new one, never a 0-byte or half file;
at worst a `.NAME.tmp-*` file is left beside it. Folders (the export) are written the same way: a temporary
sibling folder, then an atomic exchange with the old one (Linux `renameat2(RENAME_EXCHANGE)`; elsewhere two
renames, with the old folder kept under a `.NAME.old-*` name in between).

When the disk fills up, the temporary file is removed and `DiskFullError` says which folder, how much the
write needed and how much is free; whatever was saved before is untouched.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import shutil
import tempfile
from pathlib import Path

# ENOSPC: no space left; EDQUOT: quota exceeded; EFBIG: over the file size limit (ulimit -f).
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFullError(OSError):
    """A write did not fit on its disk. Its message names the folder, the bytes needed and the bytes free."""

    def __str__(self) -> str:
        return self.strerror


def megabytes(n: int | float) -> str:
    return f"{n / 1e6:,.1f} MB"


def free_bytes(folder: str | Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


RUN_ADVICE = (
    "Free some space there, or move the run to another disk with --trainer.default_root_dir, and resume with "
    "--ckpt_path and the newest checkpoint saved."
)


def disk_full_error(
    folder: str | Path, what: str, needed: int | None, cause: OSError | None = None, advice: str = RUN_ADVICE
) -> DiskFullError:
    free = free_bytes(folder)
    need = f" needs {megabytes(needed)}" if needed is not None else " did not fit"
    have = f", {megabytes(free)} free there" if free is not None else ""
    reason = f" ({os.strerror(cause.errno)})" if cause is not None and cause.errno else ""
    error = DiskFullError(
        errno.ENOSPC,
        f"no space left on the disk of '{folder}'{reason}: writing {what}{need}{have}. What was saved before is "
        f"intact (the write went to a temporary file, now removed). {advice}",
    )
    error.folder, error.needed = str(folder), needed
    return error


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


def disk_full_in_chain(err: BaseException | None) -> OSError | None:
    """A disk-full error in `err` or in what it was raised from or during (on a full disk the cleanup after the
    first failure often fails again): litsft's own `DiskFullError` if there is one, else the first raw one."""
    seen, raw = set(), None
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DiskFullError):
            return err
        if raw is None and is_disk_full(err):
            raw = err
        err = err.__cause__ or err.__context__
    return raw


def explain_disk_full(err: OSError) -> str:
    """One message for a disk-full error: litsft's own, or one naming the folder of the file being written."""
    if isinstance(err, DiskFullError):
        return str(err)
    folder = os.path.dirname(os.path.abspath(err.filename)) if err.filename else None
    what = f"'{os.path.basename(err.filename)}'" if err.filename else "a file"
    return str(disk_full_error(folder or os.getcwd(), what, None, err))


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new entry in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_all(fd: int, data: memoryview) -> None:
    """os.write until every byte is written (a seam the fault-injection tests replace)."""
    while data:
        written = os.write(fd, data)
        data = data[written:]


def write_bytes(path: str | Path, data: bytes | memoryview, what: str | None = None) -> None:
    """Write `data` to `path` atomically and durably (see the module docstring)."""
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    what = what or f"'{path.name}'"
    data = memoryview(data).cast("B")
    free = free_bytes(folder)
    if free is not None and free < len(data):  # fail before writing anything
        raise disk_full_error(folder, what, len(data))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=folder)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if path.exists():
            shutil.copymode(path, tmp)  # keep the target's permissions
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(err):
            raise disk_full_error(folder, what, len(data), err) from err
        raise
    fsync_dir(folder)
    for stale in folder.glob(f".{glob.escape(path.name)}.tmp-*"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, what: str | None = None) -> None:
    write_bytes(path, text.encode("utf-8"), what)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_folder_beside(target: str | Path) -> Path:
    """A new empty folder next to `target` (same filesystem), for `replace_folder`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


def fsync_tree(folder: str | Path) -> None:
    """fsync every file under `folder` and every folder in it."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # the kernel or filesystem cannot exchange: fall back to two renames
    raise OSError(code, os.strerror(code), str(b))


def replace_folder(tmp: str | Path, target: str | Path) -> None:
    """Put the finished folder `tmp` (a sibling of `target`) in place of `target`; the old one is removed after."""
    tmp, target = Path(tmp), Path(target)
    fsync_tree(tmp)
    if not target.exists():
        os.rename(tmp, target)
    elif _exchange(tmp, target):
        shutil.rmtree(tmp)  # now holds the old folder
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
        os.rename(tmp, target)
        shutil.rmtree(old)
    fsync_dir(target.parent)
