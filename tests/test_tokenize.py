import datasets
import pytest

from litsft.batch import IGNORE_INDEX
from litsft.data.tokenize_alpaca import labels_for, process_rows, tokenize_batch
from litsft.prompts import ALPACA, PLAIN


def encode(tokenizer, template, instruction, input_, output, max_len=1024, mask=True):
    batch = {"instruction": [instruction], "input": [input_], "output": [output]}
    out = tokenize_batch(batch, tokenizer, template, max_len, mask)
    ids, p = out["input_ids"][0], out["prompt_len"][0]
    return ids, labels_for(ids, p), out


def learned_text(tokenizer, ids, labels):
    return tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])


def test_prompt_masked_response_and_eos_learned(tiny_tokenizer):
    ids, labels, _ = encode(tiny_tokenizer, ALPACA, "Add 2 and 3.", "", "2 plus 3 is 5.")
    prompt_ids = tiny_tokenizer(ALPACA.render("Add 2 and 3."))["input_ids"]
    # The alpaca prompt ends with "\n": a clean pre-token boundary, so the prompt tokens are a prefix.
    assert ids[: len(prompt_ids)] == prompt_ids
    assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert all(label != IGNORE_INDEX for label in labels[len(prompt_ids) :])
    assert ids[-1] == tiny_tokenizer.eos_token_id and labels[-1] == tiny_tokenizer.eos_token_id
    assert learned_text(tiny_tokenizer, ids[:-1], labels[:-1]) == "2 plus 3 is 5."


@pytest.mark.parametrize("response", [" leading space", "\nnewline first", ", punctuation", "plain start", "  two"])
def test_plain_boundary_is_exact_when_bpe_merges_across_it(tiny_tokenizer, response):
    instruction = "Explain machine learning in few words."
    ids, labels, _ = encode(tiny_tokenizer, PLAIN, instruction, "", response)
    enc = tiny_tokenizer(PLAIN.render(instruction) + response, return_offsets_mapping=True)
    boundary = len(PLAIN.render(instruction))
    for tok, (start, end), label in zip(enc["input_ids"], enc["offset_mapping"], labels):
        # learned exactly when the token holds a character of the response
        assert (label != IGNORE_INDEX) == (end > boundary), (tiny_tokenizer.decode([tok]), start, end)
    # every response character is covered by learned tokens, none of the prompt's characters before the seam
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert enc["offset_mapping"][first][0] <= boundary < enc["offset_mapping"][first][1]
    assert labels[-1] == tiny_tokenizer.eos_token_id


def test_plain_boundary_on_the_real_gpt2_tokenizer(gpt2_tokenizer):
    # The seed's format has no separator without input: "Write the plural of cat" + "s" is one GPT-2 token " cats"
    # across the seam; it holds a response character, so it must be learned.
    ids, labels, _ = encode(gpt2_tokenizer, PLAIN, "Write the plural of cat", "", "s")
    assert [gpt2_tokenizer.decode([t]) for t, lab in zip(ids, labels) if lab != IGNORE_INDEX] == [
        " cats",
        "<|endoftext|>",
    ]


def test_mask_prompt_false_learns_everything(tiny_tokenizer):
    ids, labels, _ = encode(tiny_tokenizer, ALPACA, "Add 2 and 3.", "", "5", mask=False)
    assert labels == ids


def test_literal_eos_text_in_a_row_is_not_an_eos(tiny_tokenizer):
    ids, _, _ = encode(tiny_tokenizer, ALPACA, "Say <|endoftext|> please", "", "ok <|endoftext|>")
    assert ids.count(tiny_tokenizer.eos_token_id) == 1 and ids[-1] == tiny_tokenizer.eos_token_id


def test_truncation_cuts_the_response_end_and_counts(tiny_tokenizer):
    full, _, _ = encode(tiny_tokenizer, ALPACA, "List three colors.", "", "1. red\n2. blue\n3. green")
    prompt_len = len(tiny_tokenizer(ALPACA.render("List three colors."))["input_ids"])
    max_len = prompt_len + 3
    ids, labels, out = encode(tiny_tokenizer, ALPACA, "List three colors.", "", "1. red\n2. blue\n3. green", max_len)
    assert ids == full[:max_len]  # prompt start and response start kept, response end and EOS cut
    assert out["truncated"] == [True] and out["num_labels"] == [3]
    assert labels[-1] != tiny_tokenizer.eos_token_id


def test_rows_whose_prompt_fills_max_seq_length_are_dropped_and_counted(tiny_tokenizer):
    rows = datasets.Dataset.from_dict(
        {
            "instruction": ["short", "a much longer instruction " * 20, "short too"],
            "input": ["", "", ""],
            "output": ["yes", "no", ""],
        }
    )
    prompt_len = len(tiny_tokenizer(ALPACA.render("short"))["input_ids"])
    kept, counts = process_rows(rows, tiny_tokenizer, ALPACA, max_seq_length=prompt_len + 4)
    assert kept["row"] == [0, 2]
    assert (counts.rows, counts.kept, counts.dropped, counts.empty_output) == (3, 2, 1, 1)
    assert min(kept["num_labels"]) >= 1  # no kept row can give a 0/0 loss
    # the empty output still teaches the EOS
    row2 = kept[1]
    assert row2["input_ids"][row2["prompt_len"] :] == [tiny_tokenizer.eos_token_id]
