"""On real Alpaca rows and the real GPT-2 tokenizer (../shared/data), when present; skipped otherwise."""

import json

import pytest

from litsft.prompts import ALPACA
from tests.helpers import SHARED_DATA
from tests.tutorial_format import assert_tutorial_format, preview_plain

ALPACA_FILE = SHARED_DATA / "alpaca" / "alpaca_data_first2000.json"


@pytest.fixture(scope="module")
def real_rows():
    if not ALPACA_FILE.is_file():
        pytest.skip("../shared/data/alpaca is absent")
    return json.loads(ALPACA_FILE.read_text())


@pytest.mark.integration
def test_preview_matches_an_independent_implementation(in_repo, tmp_path, real_rows, gpt2_tokenizer):
    """Row by row, unbatched: the prompt tokenized ALONE must be a prefix, and labels mask exactly it."""
    from litsft.preview import main

    tok_dir = tmp_path / "tok"
    gpt2_tokenizer.save_pretrained(str(tok_dir))
    out = tmp_path / "p.jsonl"
    main(
        ["-c", "configs/default.yaml", "--data.dataset", str(ALPACA_FILE), "--model.model_name_or_path",
         str(SHARED_DATA / "gpt2-tokenizer"), "--rows", "2000", "--jsonl", str(out)]
    )  # fmt: skip
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2000
    eos = gpt2_tokenizer.eos_token_id
    for rec, row in zip(records, real_rows):
        prompt = ALPACA.render(row["instruction"], row["input"])
        prompt_ids = gpt2_tokenizer.encode(prompt)
        full_ids = gpt2_tokenizer.encode(prompt + row["output"]) + [eos]
        assert rec["text"] == prompt + row["output"]
        assert rec["input_ids"] == full_ids
        assert full_ids[: len(prompt_ids)] == prompt_ids, rec["row"]
        expected = [-100] * len(prompt_ids) + full_ids[len(prompt_ids) :]
        assert rec["labels"] == expected, rec["row"]


def test_real_rows_token_statistics(tmp_path, real_rows, gpt2_tokenizer):
    import datasets

    from litsft.data.tokenize_alpaca import process_rows

    rows = datasets.Dataset.from_list(real_rows)
    kept, counts = process_rows(rows, gpt2_tokenizer, ALPACA, max_seq_length=512)
    assert counts.rows == 2000 and counts.dropped == 0
    assert counts.empty_output == sum(1 for r in real_rows if not r["output"])
    assert min(kept["num_labels"]) >= 1


@pytest.mark.slow  # ~20 s on 2 cores; the default run checks `plain` on the 800 repo rows (test_prompts.py)
@pytest.mark.integration
def test_plain_is_the_tutorial_format_on_every_real_row(in_repo, tmp_path, real_rows, gpt2_tokenizer):
    """All 26,101 real Alpaca rows in ../shared/data (~60% without input), through `python -m litsft.preview
    --data.prompt_template plain`, against the tutorial's rule written out independently."""
    path = SHARED_DATA / "alpaca" / "alpaca_data_subset_26101.json"
    rows = json.loads(path.read_text())
    assert rows[: len(real_rows)] == real_rows  # the other file is its first 2,000 rows: every row is covered
    records = preview_plain(path, SHARED_DATA / "gpt2-tokenizer", tmp_path / "plain.jsonl", len(rows))
    assert sum(1 for r in rows if not r["input"]) > 0.5 * len(rows)
    assert_tutorial_format(records, rows, gpt2_tokenizer, max_seq_length=512)
