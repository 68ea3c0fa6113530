"""Read instruction data from the hub, a local file or a `save_to_disk` folder, and check every row.

The result is always a `datasets.Dataset` with exactly the columns `instruction`, `input`, `output` (all
strings), in source order. Problems are reported with the file, row and field, before any tokenization.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import datasets

from litsft.errors import LitSFTError
from litsft.hub import looks_like_path

FILE_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def source_kind(dataset: str) -> str:
    """'file', 'folder' (a `save_to_disk` dataset) or 'hub'; raises for a local path that does not exist."""
    path = Path(dataset).expanduser()
    if path.is_file():
        if path.suffix not in FILE_FORMATS:
            raise LitSFTError(
                f"--data.dataset: '{dataset}' has extension '{path.suffix}'; use .json, .jsonl, .parquet or .csv."
            )
        if not os.access(path, os.R_OK):
            raise LitSFTError(f"--data.dataset: '{dataset}' cannot be read (permission denied). Check its permissions.")
        return "file"
    if path.is_dir():
        return "folder"
    if path.exists():  # a FIFO, socket or device: not a file that can be hashed, then read
        raise LitSFTError(
            f"--data.dataset: '{dataset}' is not a regular file (a named pipe or device). litsft reads the data "
            "twice (its hash keys the tokenized cache, then its rows): save it to a file first."
        )
    if looks_like_path(dataset):
        raise LitSFTError(
            f"--data.dataset: file '{dataset}' does not exist. Check the path (relative to {Path.cwd()})."
        )
    return "hub"


def file_fingerprint(path: str | Path) -> str:
    """Content hash of a local file: the cache is keyed by what the file holds, not by its name or mtime."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise LitSFTError(f"--data.dataset: '{path}' cannot be read ({err.strerror}). Check the file.") from err
    return digest.hexdigest()


def _read_json_records(path: Path) -> list[dict]:
    """A JSON list of objects (Alpaca's own format) or JSON Lines; errors name the line."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a UTF-8 BOM (Windows editors write one) is not data
    except UnicodeDecodeError as err:
        raise LitSFTError(f"{path}: not UTF-8 text (byte {err.start}). Re-save the file as UTF-8.") from err
    if not text.strip():
        raise LitSFTError(f"{path}: the file is empty.")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise LitSFTError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}.") from err
        return records
    if text.lstrip().startswith("{"):
        _refuse_wrapped_rows(path, text)
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise LitSFTError(f"{path}: line {lineno} is not valid JSON ({err.msg}). Fix or delete that line.") from err
    return records


def _refuse_wrapped_rows(path: Path, text: str) -> None:
    """A whole file that is one JSON object holding the rows (`{"data": [...]}`) is a common export format: say
    so, instead of "line 1 is not valid JSON" (pretty-printed) or "no column 'instruction'" (one line)."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return  # JSON Lines (or broken JSON): the line-by-line reader reports it
    lists = [key for key, value in whole.items() if isinstance(value, list) and value and isinstance(value[0], dict)]
    if lists:
        raise LitSFTError(
            f"{path}: the file is one JSON object and the rows are inside it, under '{lists[0]}'. litsft reads a JSON "
            f"list of rows ([{{...}}, {{...}}]) or JSON Lines (one row per line): save the list itself, e.g. with "
            f"`json.dump(data['{lists[0]}'], f)`."
        )


def _read_csv_records(path: Path) -> list[dict]:
    """Every cell as text; an empty cell is "" (pandas would make it NaN, and numbers ints)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # no BOM glued to the first column's name
            records = list(csv.DictReader(f))
    except UnicodeDecodeError as err:
        raise LitSFTError(f"{path}: not UTF-8 text (byte {err.start}). Re-save the file as UTF-8.") from err
    except csv.Error as err:
        raise LitSFTError(f"{path}: invalid CSV ({err}).") from err
    if not records:
        raise LitSFTError(f"{path}: the file is empty (a header row and at least one data row are needed).")
    return records


def _load_raw(dataset: str, kind: str, split: str) -> datasets.Dataset | list[dict]:
    path = Path(dataset).expanduser()
    if kind == "file" and FILE_FORMATS[path.suffix] == "json":
        return _read_json_records(path)
    if kind == "file" and path.suffix == ".csv":
        return _read_csv_records(path)
    try:
        if kind == "file":
            loaded = datasets.load_dataset(FILE_FORMATS[path.suffix], data_files=str(path), split="train")
        elif kind == "folder":
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(dataset, split=split)
    except Exception as err:  # noqa: BLE001 - turned into one actionable message below
        if kind == "hub":
            raise LitSFTError(
                f"--data.dataset: could not load '{dataset}' from the Hugging Face hub ({type(err).__name__}: "
                f"{str(err)[:200]}). If this machine is offline, pass a local copy instead: "
                "--data.dataset path/to/alpaca_data.json (or .jsonl/.parquet/.csv, or a save_to_disk folder)."
            ) from err
        raise LitSFTError(f"--data.dataset: could not read '{dataset}' ({type(err).__name__}: {err}).") from err
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise LitSFTError(f"--data.split: '{dataset}' has splits {list(loaded)}, not '{split}'.")
        loaded = loaded[split]
    return loaded


def read_raw(dataset: str, split: str = "train") -> tuple[datasets.Dataset | list[dict], str]:
    """The rows as stored, unchecked (a list of JSON/CSV records, or a `datasets.Dataset`), and their content
    fingerprint: for readers of other row formats (`litsft.data.conversations`)."""
    kind = source_kind(dataset)
    raw = _load_raw(dataset, kind, split)
    return raw, file_fingerprint(Path(dataset).expanduser()) if kind == "file" else raw._fingerprint


def load_rows(dataset: str, columns: dict[str, str], split: str = "train") -> tuple[datasets.Dataset, str]:
    """Load `dataset` and return checked rows with the canonical columns `instruction`, `input`, `output`.

    `columns` maps each canonical name to the source's column name. The input column may be absent (every
    input is then empty). Rows with missing or non-string instruction/output, non-string input, or an empty
    instruction are errors naming the row; an empty output is allowed (the model then learns to stop at once).
    """
    kind = source_kind(dataset)
    raw = _load_raw(dataset, kind, split)
    fingerprint = file_fingerprint(Path(dataset).expanduser()) if kind == "file" else raw._fingerprint
    if isinstance(raw, list):
        if not raw:
            raise LitSFTError(f"{dataset}: no rows.")
        if not all(isinstance(r, dict) for r in raw):
            bad = next(i for i, r in enumerate(raw) if not isinstance(r, dict))
            raise LitSFTError(f"{dataset}: row {bad} is not a JSON object with {sorted(columns.values())} keys.")
        present = set().union(*(r.keys() for r in raw))
        get = lambda name: [r.get(name) for r in raw]  # noqa: E731
    else:
        if len(raw) == 0:
            raise LitSFTError(f"{dataset}: no rows.")
        present = set(raw.column_names)
        get = lambda name: list(raw[name])  # noqa: E731
    for canonical in ("instruction", "output"):
        if columns[canonical] not in present:
            raise LitSFTError(
                f"{dataset}: no column '{columns[canonical]}' (for {canonical}); the data has {sorted(present)}. "
                f"Set --data.{canonical}_column to the right name."
            )
    out: dict[str, list[str]] = {}
    for canonical in ("instruction", "input", "output"):
        name = columns[canonical]
        if canonical == "input" and name not in present:
            if name != "input":  # the user named a column: a typo must not silently drop every input
                raise LitSFTError(
                    f"{dataset}: no column '{name}' (for input); the data has {sorted(present)}. Set "
                    "--data.input_column to the right name, or leave it at 'input' for data without inputs."
                )
            out["input"] = [""] * len(out["instruction"])
            continue
        values = get(name)
        for row, value in enumerate(values):
            if canonical == "input" and value is None and isinstance(raw, list) and name not in raw[row]:
                values[row] = ""  # this row simply has no input key
                continue
            if value is None and isinstance(raw, list) and name not in raw[row]:
                raise LitSFTError(
                    f"{dataset}: row {row} has no field '{name}' ({canonical}). Add it or remove the row."
                )
            if not isinstance(value, str):
                raise LitSFTError(
                    f"{dataset}: row {row}, field '{name}' is {type(value).__name__} ({value!r:.60}), not a string. "
                    "Fix the row or remove it."
                )
            if canonical == "instruction" and not value.strip():
                raise LitSFTError(f"{dataset}: row {row}, field '{name}' is empty. Every row needs an instruction.")
        out[canonical] = list(values)
    return datasets.Dataset.from_dict(out), fingerprint
