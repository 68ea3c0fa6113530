"""The tutorial baseline's `plain` format (the recipe litsft replaces), written out independently of litsft's
templates, and a row-by-row check of what `python -m litsft.preview --jsonl` says litsft trains on against it."""

from __future__ import annotations

import json
from pathlib import Path


def tutorial_prompt(row: dict) -> str:
    """The tutorial's prompt: `instr + (": " + inp if inp else "")`."""
    instr, inp = row["instruction"], row.get("input") or ""
    return instr + (": " + inp if inp else "")


def tutorial_text(row: dict) -> str:
    """The tutorial's training text: its prompt with the output appended directly (no separator)."""
    return tutorial_prompt(row) + row["output"]


def preview_plain(rows_file: Path, tokenizer_dir: Path, out: Path, n_rows: int, *extra: str) -> list[dict]:
    """`python -m litsft.preview -c configs/default.yaml --data.prompt_template plain ... --jsonl out`, read back."""
    from litsft.preview import main

    main(
        ["-c", "configs/default.yaml", "--data.dataset", str(rows_file), "--data.prompt_template", "plain",
         "--model.model_name_or_path", str(tokenizer_dir), "--rows", str(n_rows), "--jsonl", str(out), *extra]
    )  # fmt: skip
    return [json.loads(line) for line in out.read_text().splitlines()]


def assert_tutorial_format(records: list[dict], rows: list[dict], tokenizer, max_seq_length: int = 512) -> None:
    """Every record's text is the tutorial's string, its token ids are that string tokenized (+ EOS, cut at
    `max_seq_length`), and its labels mask a prefix of the tutorial's prompt and learn the whole output."""
    assert len(records) == len(rows)
    eos = tokenizer.eos_token_id
    texts = [tutorial_text(r) for r in rows]
    encoded = tokenizer(texts, add_special_tokens=True, split_special_tokens=True)["input_ids"]
    for rec, row, text, ids in zip(records, rows, texts, encoded, strict=True):
        where = f"row {rec['row']}: {text[:80]!r}"
        assert rec["text"] == text, where
        assert rec["input_ids"] == (ids + [eos])[:max_seq_length], where
        prompt_len = next(i for i, label in enumerate(rec["labels"]) if label != -100)
        assert rec["labels"][prompt_len:] == rec["input_ids"][prompt_len:], where
        masked = tokenizer.decode(rec["input_ids"][:prompt_len])
        assert tutorial_prompt(row).startswith(masked), where  # nothing of the output is masked
        if len(ids) + 1 <= max_seq_length and row["output"]:
            learned = tokenizer.decode(rec["input_ids"][prompt_len:-1])
            assert learned.endswith(row["output"]), where  # all of the output is learned
            assert len(masked) + len(learned) == len(text), where
