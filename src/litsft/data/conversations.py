"""Chat data: conversations as `[{role, content}, ...]`, read from any source `litsft.data.sources` reads.

Accepted message layouts (per conversation, detected from the keys): OpenAI (`role`/`content`) and ShareGPT
(`from`/`value`, roles `human`/`gpt`), or any other keys named with `role_key`/`content_key`; roles are mapped to
`system`, `user`, `assistant` (or `tool`) by `ROLE_ALIASES` plus `role_map`. The result is a `datasets.Dataset`
with one column `messages` (list of `{"role", "content"}` strings), in source order. Problems are reported with
the file, row, message and field, before any tokenization.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from litsft.data.sources import FILE_FORMATS, load_rows, read_raw, source_kind
from litsft.errors import LitSFTError

# Columns that hold conversations when `--data.messages_column` is not set, in order of preference.
MESSAGE_COLUMNS = ("messages", "conversations")
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "tool": "tool",
}
ROLES = ("system", "user", "assistant", "tool")
KEY_LAYOUTS = (("role", "content"), ("from", "value"))


@dataclass(frozen=True)
class MessageColumns:
    """Where conversations are and how their messages are spelled (`--data.messages_column` etc.)."""

    column: str | None = None
    """Column of conversations; None: 'messages', else 'conversations'."""
    role_key: str | None = None
    """Key of a message's role; None: 'role' or 'from', whichever the conversation uses."""
    content_key: str | None = None
    """Key of a message's text; None: 'content' or 'value'."""
    role_map: dict[str, str] = field(default_factory=dict)
    """Extra source role -> role ('system', 'user', 'assistant', 'tool'), on top of `ROLE_ALIASES`."""

    def settings(self) -> dict:
        return {"column": self.column, "role_key": self.role_key, "content_key": self.content_key, **self.role_map}


def source_columns(dataset: str, split: str) -> list[str]:
    """Column names of `dataset`, read cheaply (first record, file header or schema) for format detection."""
    path = Path(dataset).expanduser()
    kind = source_kind(dataset)
    if kind == "file" and FILE_FORMATS[path.suffix] == "json":
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
        stripped = text.lstrip()
        if stripped.startswith("["):
            stripped = stripped[1:].lstrip()
        try:
            first, _ = json.JSONDecoder().raw_decode(stripped)
        except json.JSONDecodeError:
            return []  # the full reader reports the problem with its line
        return list(first) if isinstance(first, dict) else []
    if kind == "file" and path.suffix == ".csv":
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            return next(csv.reader(f), [])
    if kind == "file":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    raw, _ = read_raw(dataset, split)  # hub or save_to_disk folder: loading is needed anyway
    return list(raw.column_names)


def detect_format(data_format: str, dataset: str, split: str, columns: MessageColumns) -> str:
    """'alpaca' or 'messages': `data_format` unless it is 'auto', then 'messages' when the data has a column of
    conversations (`columns.column`, or one of `MESSAGE_COLUMNS`)."""
    if data_format in ("alpaca", "messages"):
        return data_format
    if data_format != "auto":
        raise LitSFTError(f"--data.format: unknown format '{data_format}'; use auto, alpaca or messages.")
    present = source_columns(dataset, split)
    wanted = (columns.column,) if columns.column else MESSAGE_COLUMNS
    return "messages" if any(c in present for c in wanted) else "alpaca"


def conversation(value, where: str, columns: MessageColumns) -> list[dict[str, str]]:
    if not isinstance(value, (list, tuple)) or not value:
        kind = "empty" if isinstance(value, (list, tuple)) else type(value).__name__
        raise LitSFTError(f"{where} is {kind}, not a list of messages. Fix or remove the row.")
    first = value[0] if isinstance(value[0], dict) else {}
    role_key, content_key = columns.role_key, columns.content_key
    if role_key is None or content_key is None:
        layout = next((keys for keys in KEY_LAYOUTS if all(k in first for k in keys)), KEY_LAYOUTS[0])
        role_key, content_key = role_key or layout[0], content_key or layout[1]
    aliases = ROLE_ALIASES | columns.role_map
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise LitSFTError(f"{where}, message {i} is {type(message).__name__}, not an object.")
        for key in (role_key, content_key):
            if message.get(key) is None:
                raise LitSFTError(
                    f"{where}, message {i} has no '{key}' (its keys: {sorted(message)}). Set --data.role_key / "
                    "--data.content_key to the keys your messages use, or fix the row."
                )
        role, content = message[role_key], message[content_key]
        if not isinstance(content, str):
            raise LitSFTError(
                f"{where}, message {i}: '{content_key}' is {type(content).__name__}, not text (litsft trains on text "
                "messages; multimodal parts and tool calls are not supported). Fix or remove the row."
            )
        mapped = aliases.get(role) if isinstance(role, str) else None
        if mapped not in ROLES:
            raise LitSFTError(
                f"{where}, message {i}: unknown role {role!r}. Known: {sorted(aliases)}; map others with "
                "--data.role_map '{" + f"{role}: user" + "}' (to one of system, user, assistant, tool)."
            )
        out.append({"role": mapped, "content": content})
    return out


def load_conversations(dataset: str, columns: MessageColumns, split: str = "train") -> tuple[datasets.Dataset, str]:
    """Checked conversations of `dataset` as a Dataset with one column `messages`, and the data's fingerprint.

    Alpaca-format data (no column of conversations, but `instruction`/`output`) becomes one-turn conversations:
    the instruction (and its input after a blank line) as the user's message, the output as the assistant's.
    """
    for role in columns.role_map.values():
        if role not in ROLES:
            raise LitSFTError(f"--data.role_map: {role!r} is not a role; map to one of {', '.join(ROLES)}.")
    raw, fingerprint = read_raw(dataset, split)
    if isinstance(raw, datasets.Dataset):
        present = set(raw.column_names)
    else:
        present = set().union(*(r.keys() for r in raw if isinstance(r, dict)))
    wanted = (columns.column,) if columns.column else MESSAGE_COLUMNS
    name = next((c for c in wanted if c in present), None)
    if name is None:
        if {"instruction", "output"} <= present and columns.column is None:
            return _from_alpaca(dataset, split), fingerprint
        raise LitSFTError(
            f"{dataset}: no column of conversations ({' or '.join(wanted)}); the data has {sorted(present)}. Set "
            "--data.messages_column to the column holding the [{role, content}, ...] lists."
        )
    if isinstance(raw, datasets.Dataset):

        def check(batch: dict, indices: list[int]) -> dict:
            where = f"{dataset}: row {{}}, column '{name}'"
            return {"messages": [conversation(v, where.format(i), columns) for v, i in zip(batch[name], indices)]}

        rows = raw.map(
            check, batched=True, with_indices=True, remove_columns=raw.column_names, desc="Reading conversations"
        )
        return rows, fingerprint
    if not raw:
        raise LitSFTError(f"{dataset}: no rows.")
    messages = []
    for i, record in enumerate(raw):
        if not isinstance(record, dict) or name not in record:
            raise LitSFTError(f"{dataset}: row {i} has no field '{name}'. Add it or remove the row.")
        messages.append(conversation(record[name], f"{dataset}: row {i}, field '{name}'", columns))
    return datasets.Dataset.from_dict({"messages": messages}), fingerprint


def _from_alpaca(dataset: str, split: str) -> datasets.Dataset:
    rows, _ = load_rows(dataset, {"instruction": "instruction", "input": "input", "output": "output"}, split)

    def convert(batch: dict) -> dict:
        out = []
        for instruction, input_, output in zip(batch["instruction"], batch["input"], batch["output"], strict=True):
            user = f"{instruction}\n\n{input_}" if input_ else instruction
            out.append([{"role": "user", "content": user}, {"role": "assistant", "content": output}])
        return {"messages": out}

    return rows.map(convert, batched=True, remove_columns=rows.column_names, desc="Alpaca rows -> conversations")
