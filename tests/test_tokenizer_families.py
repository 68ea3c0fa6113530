"""Alpaca rows with tokenizers unlike GPT-2's: the mask boundary stays exact, EOS is appended exactly once.

Reference per row, written from the spec: Stanford's prompt (its text copied here), one tokenization of
prompt + response with the tokenizer's own special tokens, a token learned iff it covers a character of the
response, then EOS (the tokenizer's post-processor EOS, if any, replaced by exactly one learned EOS).
"""

import pytest
import torch

from litsft.data.collate import SFTCollator
from litsft.data.tokenize_alpaca import tokenize_batch
from litsft.data.tokenizer import load_tokenizer
from litsft.prompts import ALPACA
from tests.families import chatml_tokenizer, sentencepiece_tokenizer
from tests.helpers import tiny_datamodule, write_rows

STANFORD_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
STANFORD_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
    "### Response:\n"
)
RESPONSES = [
    "The capital of France is Paris.",
    " leading space",
    ", punctuation first",
    "你好, 世界",  # byte fallback: each character is 3 byte pieces with the same offsets
    "ñandú 😀",
    "",  # empty: learns the EOS alone
    "\nnewline first",
    "</s> is text here",  # a literal EOS inside a row is text
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        "sentencepiece": sentencepiece_tokenizer(root / "sp"),
        "sentencepiece-eos-post": sentencepiece_tokenizer(root / "sp-eos", eos_post=True),
        "chatml": chatml_tokenizer(root / "chatml"),
    }


def reference(tokenizer, instruction: str, input_: str, response: str) -> tuple[list[int], list[int]]:
    template = STANFORD_WITH_INPUT if input_ else STANFORD_NO_INPUT
    prompt = template.format(instruction=instruction, input=input_)
    enc = tokenizer(prompt + response, return_offsets_mapping=True, split_special_tokens=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    while ids and ids[-1] == tokenizer.eos_token_id and tuple(offsets[-1]) == (0, 0):  # the post-processor's EOS
        ids.pop()
        offsets.pop()
    labels = [t if e > len(prompt) else -100 for t, (_, e) in zip(ids, offsets, strict=True)]
    return ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]


@pytest.mark.parametrize("family", ["sentencepiece", "sentencepiece-eos-post", "chatml"])
def test_alpaca_masks_equal_the_reference_on_every_row(folders, family):
    tokenizer = load_tokenizer(str(folders[family]))
    rows = [(f"Say it {i}", "an input" if i % 3 == 0 else "", r) for i, r in enumerate(RESPONSES * 3)]
    batch = {k: [r[j] for r in rows] for j, k in enumerate(("instruction", "input", "output"))}
    out = tokenize_batch(batch, tokenizer, ALPACA, max_seq_length=4096)
    for i, (instruction, input_, response) in enumerate(rows):
        ids, labels = reference(tokenizer, instruction, input_, response)
        p = out["prompt_len"][i]
        assert out["input_ids"][i] == ids, (i, response)
        assert [-100] * p + ids[p:] == labels, (i, response)
        assert ids.count(tokenizer.eos_token_id) == 1 and ids[-1] == tokenizer.eos_token_id  # EOS exactly once
        if tokenizer.bos_token_id is not None:  # Llama-style: BOS first, without offsets, never learned
            assert ids[0] == tokenizer.bos_token_id and p >= 1


def test_sentencepiece_specifics_are_what_the_tests_claim(folders):
    """The family really has what the masks must survive: BOS with offsets (0, 0), `▁` pieces, byte fallback."""
    tokenizer = load_tokenizer(str(folders["sentencepiece"]))
    enc = tokenizer("Hi 你", return_offsets_mapping=True)
    pieces = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert pieces[0] == "<s>" and tuple(enc["offset_mapping"][0]) == (0, 0)
    assert pieces[-3:] == ["<0xE4>", "<0xBD>", "<0xA0>"] and {tuple(o) for o in enc["offset_mapping"][-3:]} == {(3, 4)}
    assert any(p.startswith("▁") for p in pieces)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # no pad token: litsft pads with EOS
    post = load_tokenizer(str(folders["sentencepiece-eos-post"]))
    assert post("x")["input_ids"][-1] == post.eos_token_id  # its post-processor appends EOS itself
    chatml = load_tokenizer(str(folders["chatml"]))
    assert chatml.pad_token == "<|endoftext|>" != chatml.eos_token == "<|im_end|>" and chatml.bos_token is None


def test_byte_fallback_pieces_of_one_character_are_learned_together(folders):
    tokenizer = load_tokenizer(str(folders["sentencepiece"]))
    batch = {"instruction": ["Greet"], "input": [""], "output": ["你"]}
    out = tokenize_batch(batch, tokenizer, ALPACA, 4096)
    ids, p = out["input_ids"][0], out["prompt_len"][0]
    assert tokenizer.convert_ids_to_tokens(ids[p:]) == ["<0xE4>", "<0xBD>", "<0xA0>", "</s>"]


@pytest.mark.parametrize("family", ["sentencepiece", "chatml"])
def test_padding_never_decides_labels_when_pad_is_or_is_not_eos(folders, tmp_path, family):
    tokenizer = load_tokenizer(str(folders[family]))
    data = write_rows(tmp_path / "rows.json", [{"instruction": f"Q{i}", "output": "a" * (i % 5)} for i in range(12)])
    dm = tiny_datamodule(
        data, tmp_path / "cache", tokenizer_name_or_path=str(folders[family]), val_size=0, batch_size=12
    )
    dm.setup("fit")
    rows = [dm.train_rows[i] for i in range(len(dm.train_rows))]
    batch = SFTCollator(tokenizer.pad_token_id)(rows)
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["labels"][b, n - 1] == tokenizer.eos_token_id  # the EOS is learned, whatever pads
        assert (batch["input_ids"][b, n:] == tokenizer.pad_token_id).all() and (batch["labels"][b, n:] == -100).all()
    assert (batch["attention_mask"].sum(1) == torch.tensor([len(r["input_ids"]) for r in rows])).all()
