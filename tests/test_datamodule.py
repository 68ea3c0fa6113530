import json

import pytest

import litsft.data.datamodule as dm_module
from litsft.errors import LitSFTError
from tests.helpers import tiny_datamodule


def make(path, tmp_path, **kw):
    return tiny_datamodule(path, tmp_path / "cache", **({"val_size": 0.25} | kw))


def test_split_is_deterministic_and_disjoint(alpaca_file, tmp_path):
    a, b = make(alpaca_file, tmp_path), make(alpaca_file, tmp_path)
    a.setup("fit")
    b.setup("fit")
    assert a.val_rows["row"] == b.val_rows["row"]
    assert len(a.val_rows) == 10 and len(a.train_rows) == 30
    assert not set(a.val_rows["row"]) & set(a.train_rows["row"])
    other = make(alpaca_file, tmp_path, seed=7)
    other.setup("fit")
    assert other.val_rows["row"] != a.val_rows["row"]


def test_validation_rows_do_not_move_with_max_seq_length(alpaca_file, tmp_path):
    a, b = make(alpaca_file, tmp_path), make(alpaca_file, tmp_path, max_seq_length=200)
    a.setup("fit")
    b.setup("fit")
    assert a.val_rows["row"] == b.val_rows["row"]


def test_second_setup_reuses_the_cache(alpaca_file, tmp_path, monkeypatch):
    first = make(alpaca_file, tmp_path)
    first.prepare_data()
    first.setup("fit")

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again despite a cache hit")

    monkeypatch.setattr(dm_module, "process_rows", no_tokenizing)
    monkeypatch.setattr(dm_module, "load_rows", no_tokenizing)
    second = make(alpaca_file, tmp_path)
    second.prepare_data()
    second.setup("fit")
    assert second.train_rows["input_ids"] == first.train_rows["input_ids"]
    # ...but any setting that changes the result misses it
    with pytest.raises(AssertionError, match="tokenized again"):
        make(alpaca_file, tmp_path, prompt_template="plain").prepare_data()
    with pytest.raises(AssertionError, match="tokenized again"):
        make(alpaca_file, tmp_path, max_seq_length=100).prepare_data()


def test_changed_file_content_misses_the_cache(alpaca_file, tmp_path, rows):
    dm = make(alpaca_file, tmp_path)
    dm.setup("fit")
    before = dm._cache()[0].path
    rows[0]["output"] = "changed"
    alpaca_file.write_text(json.dumps(rows))
    again = make(alpaca_file, tmp_path)
    again.setup("fit")
    assert again._cache()[0].path != before
    assert again.counts.rows == 40


def test_counts_are_reported(alpaca_file, tmp_path, rank_zero_log):
    dm = make(alpaca_file, tmp_path)
    dm.setup("fit")
    assert dm.counts.rows == 40 and dm.counts.empty_output == 1
    assert "40 rows read: 40 kept, 0 dropped" in rank_zero_log.text


def test_batches_follow_the_contract(alpaca_file, tmp_path, tiny_tokenizer):
    dm = make(alpaca_file, tmp_path)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    b, t = batch["input_ids"].shape
    assert batch["attention_mask"].shape == batch["labels"].shape == (b, t)
    # padding positions never learned; each row ends its learned part with EOS
    assert ((batch["attention_mask"] == 0) <= (batch["labels"] == -100)).all()
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        n = int(mask.sum())
        assert labels[n - 1] == ids[n - 1] == tiny_tokenizer.eos_token_id


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"val_size": 40}, "val_size=40 asks for 40 validation rows but the data has only 40"),
        ({"val_size": 1.5}, "a fraction must be in"),
        ({"batch_size": 0}, "--data.batch_size must be a positive integer"),
        ({"max_seq_length": 0}, "--data.max_seq_length must be a positive integer"),
        ({"prompt_template": "nope"}, "unknown template 'nope'"),
        ({"max_seq_length": 5}, "all 40 rows were dropped"),
    ],
)
def test_bad_settings_fail_before_training(alpaca_file, tmp_path, kw, message):
    with pytest.raises(LitSFTError, match=message):
        make(alpaca_file, tmp_path, **kw).setup("fit")
