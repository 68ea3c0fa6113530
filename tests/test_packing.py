import numpy as np
import pytest
import torch

from litsft.data.collate import SFTCollator
from litsft.data.packing import PackedBatchSampler, PackedCollator, pack_bins
from litsft.errors import LitSFTError
from litsft.model.attention_mask import block_causal_mask
from tests.helpers import first_step_grads, tiny_datamodule, tiny_module


def lengths_and_labels(n=300, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 120, size=n)
    return lengths, np.minimum(rng.integers(1, 60, size=n), lengths - 1)


def test_bins_hold_every_row_once_within_capacity_and_nearly_full():
    lengths, _ = lengths_and_labels()
    bins = pack_bins(lengths, 256, np.random.default_rng(0))
    rows = np.concatenate(bins)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    assert max(lengths[b].sum() for b in bins) <= 256
    assert len(bins) <= np.ceil(lengths.sum() / 256) + 1  # best-fit decreasing: (almost) no bin wasted
    again = pack_bins(lengths, 256, np.random.default_rng(0))
    assert [b.tolist() for b in bins] == [b.tolist() for b in again]


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_sampler_every_row_once_per_epoch_same_steps_on_every_rank(replicas):
    lengths, labels = lengths_and_labels()
    seen, counts = [], set()
    for rank in range(replicas):
        sampler = PackedBatchSampler(lengths, labels, 4, 128, accumulate=2, num_replicas=replicas, rank=rank, seed=3)
        sampler.set_epoch(1)
        batches = list(sampler)
        counts.add(len(batches))
        assert len(batches) == len(sampler)
        for batch in batches:  # each micro-batch packs into at most batch_size sequences
            assert len(PackedCollator(0, 128).pack([int(lengths[k.index]) for k in batch])) <= 4
        seen += [k.index for b in batches for k in b if not k.dummy]
    assert len(counts) == 1
    assert sorted(seen) == list(range(len(lengths)))


def test_sampler_is_deterministic_for_a_seed_shuffles_per_epoch_and_tags_step_tokens():
    lengths, labels = lengths_and_labels()
    make = lambda rank: PackedBatchSampler(lengths, labels, 2, 128, accumulate=3, num_replicas=2, rank=rank, seed=5)  # noqa: E731
    first = [[k.index for k in b] for b in make(0)]
    assert first == [[k.index for k in b] for b in make(0)]
    other_epoch = make(0)
    other_epoch.set_epoch(1)
    assert first != [[k.index for k in b] for b in other_epoch]
    per_rank = [list(make(r)) for r in range(2)]
    for start in range(0, len(per_rank[0]), 3):
        step = [k.index for r in per_rank for b in r[start : start + 3] for k in b if not k.dummy]
        assert {k.step_tokens for r in per_rank for b in r[start : start + 3] for k in b} == {int(labels[step].sum())}


def rows_for(dm, n):
    return [dict(dm.train_rows[i], step_tokens=0, dummy=False) for i in range(n)]


def test_collator_restarts_positions_and_never_learns_a_rows_first_token(alpaca_file, tmp_path):
    # every token learned but the first of each row
    dm = tiny_datamodule(alpaca_file, tmp_path / "cache", val_size=0, group_by_length=False, mask_prompt=False)
    dm.setup("fit")
    rows = rows_for(dm, 6)
    batch = PackedCollator(dm.tokenizer.pad_token_id, 256)(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    assert batch["input_ids"].shape[0] < len(rows)  # rows were packed
    starts = (batch["position_ids"] == 0) & (batch["attention_mask"] == 1)
    assert int(starts.sum()) == len(rows)
    assert (batch["labels"][starts] == -100).all()
    assert int(batch["attention_mask"].sum()) == sum(lengths)
    assert batch["loss_index"].numel() == sum(n - 1 for n in lengths)  # as unpacked: labels[:, 1:] only


def test_packed_rows_cannot_attend_to_each_other(alpaca_file, tmp_path):
    dm = tiny_datamodule(alpaca_file, tmp_path / "cache", val_size=0, group_by_length=False)
    dm.setup("fit")
    rows = rows_for(dm, 2)
    model = tiny_module().model.eval()
    collate = PackedCollator(dm.tokenizer.pad_token_id, 256)

    def hidden(rows):
        batch = collate(rows)
        assert batch["input_ids"].shape[0] == 1  # both rows in one sequence
        mask = block_causal_mask(batch["position_ids"], model.config._attn_implementation, torch.float32)
        out = model.base_model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"])
        return out.last_hidden_state[0]

    n0, n1 = len(rows[0]["input_ids"]), len(rows[1]["input_ids"])
    packed = hidden(rows)
    changed = dict(rows[0], input_ids=[(t + 7) % 1000 for t in rows[0]["input_ids"]])
    assert torch.equal(hidden([changed, rows[1]])[n0 : n0 + n1], packed[n0 : n0 + n1])  # row 1 blind to row 0
    alone = model.base_model(input_ids=torch.tensor([rows[1]["input_ids"]])).last_hidden_state[0]
    torch.testing.assert_close(packed[n0 : n0 + n1], alone, rtol=1e-5, atol=1e-5)  # positions restart


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("mask_prompt", [True, False])
def test_packed_loss_equals_unpacked_loss(alpaca_file, tmp_path, attn, mask_prompt):
    dm = tiny_datamodule(alpaca_file, tmp_path / "cache", val_size=0, group_by_length=False, mask_prompt=mask_prompt)
    dm.setup("fit")
    rows = rows_for(dm, 12)
    module = tiny_module()
    module.model.config._attn_implementation = attn
    padded = SFTCollator(dm.tokenizer.pad_token_id)(rows)
    packed = PackedCollator(dm.tokenizer.pad_token_id, 256)(rows)
    assert packed["input_ids"].shape[0] < len(rows)
    loss_padded, n_padded = module._loss_sum(padded)
    loss_packed, n_packed = module._loss_sum(packed)
    assert n_packed == n_padded
    assert abs(loss_packed.item() - loss_padded.item()) <= 1e-5 * abs(loss_padded.item())


def packed_first_step_grads(path, tmp_path, batch_size, accumulate):
    return first_step_grads(path, tmp_path, batch_size, accumulate, packing=True, max_seq_length=64)


@pytest.mark.integration
def test_packed_accumulation_is_token_exact(alpaca_file, tmp_path):
    """Packed batch 2 x accumulate 2 gives the gradient of batch 4 x 1: the same rows, the exact step loss."""
    big = packed_first_step_grads(alpaca_file, tmp_path, batch_size=4, accumulate=1)
    small = packed_first_step_grads(alpaca_file, tmp_path, batch_size=2, accumulate=2)
    for k in big:
        torch.testing.assert_close(small[k], big[k], rtol=1e-5, atol=1e-7)


def test_unsupported_attention_implementation_is_a_clear_error():
    with pytest.raises(LitSFTError, match="--data.packing needs"):
        block_causal_mask(torch.zeros(1, 4, dtype=torch.long), "flash_attention_2", torch.float32)
