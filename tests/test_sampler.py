import numpy as np
import pytest

from litsft.data.sampler import StepBatchSampler


def make(rank=0, replicas=1, **kw):
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=kw.pop("n", 103))
    labels = rng.integers(1, 50, size=len(lengths))
    args = dict(batch_size=4, accumulate=3, num_replicas=replicas, rank=rank, seed=11) | kw
    return StepBatchSampler(lengths, labels, **args), lengths, labels


@pytest.mark.parametrize("replicas", [1, 2, 3])
@pytest.mark.parametrize("group_by_length", [True, False])
def test_every_row_once_per_epoch_and_same_batch_count_on_every_rank(replicas, group_by_length):
    seen, counts = [], set()
    for rank in range(replicas):
        sampler, lengths, _ = make(rank, replicas, group_by_length=group_by_length)
        sampler.set_epoch(2)
        batches = list(sampler)
        counts.add(len(batches))
        assert len(batches) == len(sampler)
        seen += [k.index for b in batches for k in b if not k.dummy]
    assert len(counts) == 1  # no rank waits for a batch that never comes
    assert sorted(seen) == list(range(len(lengths)))


def test_deterministic_for_a_seed_and_different_per_epoch():
    a, _, _ = make()
    b, _, _ = make()
    first = [[k.index for k in batch] for batch in a]
    assert first == [[k.index for k in batch] for batch in b]
    a.set_epoch(1)
    assert first != [[k.index for k in batch] for batch in a]


def test_step_tokens_count_all_micro_batches_of_the_step_on_all_ranks():
    replicas, accumulate = 2, 3
    per_rank = [list(make(r, replicas, accumulate=accumulate)[0]) for r in range(replicas)]
    _, _, labels = make()
    n_batches = len(per_rank[0])
    for start in range(0, n_batches, accumulate):
        rows = [k.index for r in per_rank for b in r[start : start + accumulate] for k in b if not k.dummy]
        expected = int(labels[rows].sum())
        for r in per_rank:
            for b in r[start : start + accumulate]:
                assert all(k.step_tokens == expected for k in b)


def test_length_grouping_reduces_padding():
    def padding(sampler, lengths):
        return sum(len(b) * max(lengths[[k.index for k in b]]) - lengths[[k.index for k in b]].sum() for b in sampler)

    grouped, lengths, _ = make(n=2000, group_by_length=True)
    random, _, _ = make(n=2000, group_by_length=False)
    assert padding(grouped, lengths) < 0.2 * padding(random, lengths)
