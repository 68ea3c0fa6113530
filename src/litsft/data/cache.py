"""Tokenized datasets on disk, keyed by everything that changes them, so a second run skips tokenization."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import datasets

from litsft.data.tokenize import RowCounts

# Bump when tokenize.py changes what it stores, or a template changes what it renders: old cache entries then stop
# matching. 3: `plain` renders a row without input as the instruction alone (the seed's format), not "instr: ";
# a post-processor EOS is no longer doubled; chat rows (label_spans).
FORMAT_VERSION = 3


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


class TokenizedCache:
    """`<cache_dir>/<key>/` holds `dataset/` (Arrow, memory-mapped on load), `counts.json` and `settings.json`."""

    def __init__(self, cache_dir: str | Path, settings: dict) -> None:
        self.settings = settings
        self.path = Path(cache_dir).expanduser() / cache_key(settings)

    def exists(self) -> bool:
        return (self.path / "counts.json").is_file()

    def save(self, processed: datasets.Dataset, counts: RowCounts) -> None:
        """Write to a temporary sibling and rename, so a crash or a racing process never leaves half a cache."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}-", dir=self.path.parent))
        try:
            processed.save_to_disk(str(tmp / "dataset"))
            (tmp / "settings.json").write_text(json.dumps(self.settings, indent=2, sort_keys=True) + "\n")
            (tmp / "counts.json").write_text(json.dumps(asdict(counts), indent=2) + "\n")
            try:
                os.replace(tmp, self.path)
            except OSError:  # another process finished first: its copy is identical
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def load(self) -> tuple[datasets.Dataset, RowCounts]:
        counts = RowCounts(**json.loads((self.path / "counts.json").read_text()))
        return datasets.load_from_disk(str(self.path / "dataset")), counts
