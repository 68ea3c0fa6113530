"""Tokenized datasets on disk, keyed by everything that changes them, so a second run skips tokenization."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import datasets

from litsft.atomic_files import disk_full_error, fsync_tree, is_disk_full
from litsft.data.row_counts import RowCounts
from litsft.errors import LitSFTError

UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST}

# Bump when tokenization changes what it stores, or a template changes what it renders: old cache entries then stop
# matching. 3: `plain` renders a row without input as the instruction alone (the tutorial's format), not "instr: ";
# a post-processor EOS is no longer doubled; chat rows (label_spans); entries carry a manifest. 4: the counts say
# `cut_mid_turn` (chat) where they said `eos_lost` (for Alpaca rows always equal to `truncated`).
FORMAT_VERSION = 4
MANIFEST = "manifest.json"


def default_cache_dir() -> str:
    return os.environ.get("LITSFT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "litsft"))


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the full tokenizer definition (vocab, merges, normalizer, special tokens)."""
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(f"{type(tokenizer).__name__}|{tokenizer.eos_token_id}|{tokenizer.bos_token_id}".encode())
    return digest.hexdigest()


def cache_key(settings: dict) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unusable_folder(folder: Path, err: BaseException) -> LitSFTError:
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    culprit = f" ('{err.filename}')" if isinstance(err, OSError) and err.filename else ""
    return LitSFTError(
        f"the tokenized-data cache folder '{folder}' cannot be used: {reason}{culprit}. Point the LITSFT_CACHE "
        "environment variable (or --data.cache_dir) at a folder you can write, e.g. LITSFT_CACHE=/tmp/litsft-cache."
    )


class TokenizedCache:
    """`<cache_dir>/<key>/` holds `dataset/` (Arrow, memory-mapped on load), `counts.json`, `settings.json`, and
    `manifest.json`: the size and SHA-256 of every other file, written last.

    `problem()` checks an entry against its manifest before it is used (~0.02 s for 52,000 rows: the Arrow file is
    read once, which also brings it into the page cache that the memory map then uses). A truncated or rewritten
    file, a missing folder or a corrupt `counts.json` is found there; the data module then rebuilds the entry.
    """

    def __init__(self, cache_dir: str | Path, settings: dict) -> None:
        self.settings = settings
        self.folder = Path(cache_dir).expanduser()
        self.path = self.folder / cache_key(settings)

    def exists(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def problem(self) -> str | None:
        """None if the entry is whole; 'missing' if there is none; else what is wrong with it."""
        if not self.path.exists():
            return "missing"
        try:
            manifest = json.loads((self.path / MANIFEST).read_text())
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"no readable {MANIFEST} ({type(err).__name__}), e.g. an interrupted or foreign write"
        for name, expected in files.items():
            path = self.path / name
            try:
                size = path.stat().st_size
            except OSError:
                return f"{name} is missing"
            if size != expected["size"]:
                return f"{name} has {size:,} bytes, {expected['size']:,} expected"
            try:
                if file_sha256(path) != expected["sha256"]:
                    return f"{name} has other bytes than were written (checksum mismatch)"
            except OSError as err:
                return f"{name} cannot be read ({err.strerror})"
        try:
            RowCounts(**json.loads((self.path / "counts.json").read_text()))
        except (OSError, ValueError, TypeError) as err:
            return f"counts.json is unreadable ({type(err).__name__})"
        return None

    def discard(self) -> None:
        """Remove a damaged entry (moved aside first, so no reader sees it half removed)."""
        try:
            aside = Path(tempfile.mkdtemp(prefix=f".{self.path.name}-damaged-", dir=self.folder))
            os.replace(self.path, aside / self.path.name)
            shutil.rmtree(aside)
        except OSError as err:
            raise unusable_folder(self.folder, err) from err

    def save(self, processed: datasets.Dataset, counts: RowCounts) -> None:
        """Write to a temporary sibling and rename, so a crash or a racing process never leaves half a cache."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}-", dir=self.folder))
        except OSError as err:  # read-only, a file in the way, no permission
            raise unusable_folder(self.folder, err) from err
        try:
            processed.save_to_disk(str(tmp / "dataset"))
            (tmp / "settings.json").write_text(json.dumps(self.settings, indent=2, sort_keys=True) + "\n")
            (tmp / "counts.json").write_text(json.dumps(asdict(counts), indent=2) + "\n")
            files = {
                path.relative_to(tmp).as_posix(): {"size": path.stat().st_size, "sha256": file_sha256(path)}
                for path in sorted(tmp.rglob("*"))
                if path.is_file()
            }
            (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT_VERSION, "files": files}, indent=1) + "\n")
            fsync_tree(tmp)
            try:
                os.replace(tmp, self.path)
            except OSError:  # another process finished first: its copy is identical
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_disk_full(err):
                raise disk_full_error(
                    self.folder, "the tokenized data", processed.data.nbytes, err,
                    advice="Free some space there, or point LITSFT_CACHE (or --data.cache_dir) at another disk.",
                ) from err  # fmt: skip
            if isinstance(err, PermissionError | OSError) and getattr(err, "errno", None) in UNWRITABLE:
                raise unusable_folder(self.folder, err) from err
            raise

    def load(self) -> tuple[datasets.Dataset, RowCounts]:
        counts = RowCounts(**json.loads((self.path / "counts.json").read_text()))
        return datasets.load_from_disk(str(self.path / "dataset")), counts
