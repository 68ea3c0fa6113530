import pytest

from litsft.errors import LitSFTError
from litsft.prompts import ALPACA, PLAIN, PromptTemplate, get_template


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


@pytest.mark.parametrize(("instruction", "input_"), [("Explain machine learning in few words.", ""), ("Sum", "1 2")])
def test_plain_is_the_seed_format(instruction, input_):
    assert PLAIN.render(instruction, input_) == instruction + ": " + input_


def test_braces_in_rows_are_not_format_fields():
    assert ALPACA.render("Fill {x} in", "{y}").count("{x}") == 1


def test_unknown_template_names_the_flag():
    with pytest.raises(LitSFTError, match="--data.prompt_template.*alpaca, plain"):
        get_template("chatml")


def test_template_round_trips_through_a_folder(tmp_path):
    ALPACA.save(tmp_path)
    assert PromptTemplate.load(tmp_path) == ALPACA
