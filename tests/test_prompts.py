import json

import pytest

from litsft.errors import LitSFTError
from litsft.prompts import ALPACA, PLAIN, PromptTemplate, get_template
from tests.helpers import SMOKE_DATA, SMOKE_MODEL
from tests.tutorial_format import assert_tutorial_format, preview_plain, tutorial_text


def test_alpaca_with_input_is_byte_exact():
    expected = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nTranslate.\n\n### Input:\nbonjour\n\n### Response:\n"
    )
    assert ALPACA.render("Translate.", "bonjour") == expected


def test_alpaca_without_input_is_byte_exact():
    expected = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nGive three tips.\n\n### Response:\n"
    )
    assert ALPACA.render("Give three tips.", "") == expected
    assert ALPACA.render("Give three tips.") == expected


def test_plain_is_the_tutorial_format():
    """The tutorial baseline: `instr + (": " + inp if inp else "")`, the output appended directly (Alpaca's row 0 reads
    "...healthy.1.Eat a balanced diet")."""
    assert PLAIN.render("Explain machine learning in few words.", "") == "Explain machine learning in few words."
    assert PLAIN.render("Explain machine learning in few words.") == "Explain machine learning in few words."
    assert PLAIN.render("Sum", "1 2") == "Sum: 1 2"
    row = {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1.Eat a balanced diet"}
    assert tutorial_text(row) == "Give three tips for staying healthy.1.Eat a balanced diet"
    assert PLAIN.render(row["instruction"], row["input"]) + row["output"] == tutorial_text(row)


@pytest.mark.integration
def test_plain_rows_are_the_tutorial_strings_on_the_repos_rows(in_repo, tmp_path, tiny_tokenizer):
    """Every synthetic row the repo ships, through `python -m litsft.preview --data.prompt_template plain`."""
    rows = json.loads(SMOKE_DATA.read_text())
    records = preview_plain(SMOKE_DATA, SMOKE_MODEL, tmp_path / "p.jsonl", len(rows), "--data.max_seq_length", "256")
    assert sum(1 for r in rows if not r["input"]) > 100  # both kinds of row are covered
    assert_tutorial_format(records, rows, tiny_tokenizer, max_seq_length=256)


def test_braces_in_rows_are_not_format_fields():
    assert ALPACA.render("Fill {x} in", "{y}").count("{x}") == 1


def test_unknown_template_names_the_flag():
    with pytest.raises(LitSFTError, match="--data.prompt_template.*alpaca, plain"):
        get_template("chatml")


def test_template_round_trips_through_a_folder(tmp_path):
    ALPACA.save(tmp_path)
    assert PromptTemplate.load(tmp_path) == ALPACA
