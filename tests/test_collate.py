import torch

from litsft.batch import IGNORE_INDEX
from litsft.data.collate import SFTCollator

EOS = 7


def test_pad_equal_to_eos_keeps_the_eos_label():
    # pad == EOS (GPT-2): a collator that derives labels from input_ids != pad would mask the learned EOS.
    rows = [
        {"input_ids": [1, 2, 3, EOS], "prompt_len": 2},
        {"input_ids": [4, 5, EOS], "prompt_len": 1},
    ]
    batch = SFTCollator(pad_token_id=EOS)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, EOS], [4, 5, EOS, EOS]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 3, EOS], [IGNORE_INDEX, 5, EOS, IGNORE_INDEX]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_pad_to_multiple_and_dummy_rows():
    rows = [
        {"input_ids": [1, 2, EOS], "prompt_len": 1, "step_tokens": 9, "dummy": False},
        {"input_ids": [1, 2, EOS], "prompt_len": 1, "step_tokens": 9, "dummy": True},
    ]
    batch = SFTCollator(pad_token_id=0, pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].shape == (2, 8)
    assert (batch["labels"][1] == IGNORE_INDEX).all()  # a filler row teaches nothing
    assert batch["step_tokens"].item() == 9.0
