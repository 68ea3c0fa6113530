import json

import pytest

from litsft.preview import main, render_row
from tests.helpers import tiny_model_args


@pytest.mark.integration
def test_jsonl_follows_the_contract(in_repo, tmp_path, alpaca_file, rows, tiny_tokenizer, capsys):
    out = tmp_path / "preview.jsonl"
    summary = main([*tiny_model_args(tmp_path, alpaca_file), "--rows", "12", "--jsonl", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in records] == list(range(12))  # source order, before split or shuffle
    assert summary == {"rows": 12, "kept": 12, "dropped": 0, "truncated": 0}
    for r in records:
        assert list(r) == ["row", "text", "input_ids", "labels"]
        src = rows[r["row"]]
        assert r["text"].endswith(src["output"]) and src["instruction"] in r["text"]
        assert len(r["labels"]) == len(r["input_ids"])
        assert r["labels"][-1] == r["input_ids"][-1] == tiny_tokenizer.eos_token_id
        learned = [t for t in r["labels"] if t != -100]
        assert tiny_tokenizer.decode(learned[:-1]) == src["output"]


@pytest.mark.integration
def test_dropped_rows_are_counted_not_written(in_repo, tmp_path, alpaca_file):
    out = tmp_path / "preview.jsonl"
    summary = main(
        [*tiny_model_args(tmp_path, alpaca_file, "--data.max_seq_length", "40"), "--rows", "20", "--jsonl", str(out)]
    )
    written = out.read_text().splitlines()
    assert summary["dropped"] > 0 and len(written) == summary["kept"] == 20 - summary["dropped"]


def test_terminal_view_tells_prompt_and_learned_tokens_apart(tiny_tokenizer):
    ids = tiny_tokenizer("Say hi: hello")["input_ids"] + [tiny_tokenizer.eos_token_id]
    prompt_len = len(tiny_tokenizer("Say hi:")["input_ids"])
    plain = render_row(tiny_tokenizer, ids, prompt_len, colour=False)
    assert plain == "Say hi:[[ hello<|endoftext|>]]"
    coloured = render_row(tiny_tokenizer, ids, prompt_len, colour=True)
    assert "\033[2mSay hi:\033[0m\033[32m hello" in coloured
