import numpy as np
import pytest

from litsft.callbacks.data_audit import data_audit, describe
from tests.helpers import tiny_datamodule


def test_audit_counts_lengths_and_supervised_share(alpaca_file, rows, tmp_path):
    dm = tiny_datamodule(alpaca_file, tmp_path / "cache", max_seq_length=40)
    dm.setup("fit")
    audit = data_audit(dm)
    assert audit["data/rows"] == len(rows) and audit["data/kept"] == dm.counts.kept
    assert audit["data/truncated"] == dm.counts.truncated > 0  # max_seq_length 40 cuts some rows
    assert audit["data/train_rows"] + audit["data/val_rows"] == dm.counts.kept
    # independently, from the token ids and labels of every kept row
    ids = [r["input_ids"] for split in (dm.train_rows, dm.val_rows) for r in split]
    lengths = np.array([len(x) for x in ids])
    learned = sum(int(n) for split in (dm.train_rows, dm.val_rows) for n in split["num_labels"][:])
    assert audit["data/tokens_max"] == lengths.max() <= 40
    assert audit["data/tokens_p50"] == pytest.approx(np.percentile(lengths, 50))
    assert audit["data/supervised_share"] == pytest.approx(learned / lengths.sum())
    assert 0 < audit["data/supervised_share"] < 1
    text = describe(audit)
    assert f"{len(rows)} rows" in text and "truncated" in text and "of tokens are learned" in text


def test_no_audit_for_a_datamodule_without_litsft_counts():
    assert data_audit(object()) is None
