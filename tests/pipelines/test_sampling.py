import numpy as np
import pytest
import torch

from pipelines.sampling import epoch_indices, num_batches


@pytest.mark.parametrize("n,shards,bs", [(10, 3, 2), (9, 2, 2), (100, 4, 7), (5, 1, 10)])
def test_shards_disjoint_and_cover(n, shards, bs):
    parts = [epoch_indices(n, seed=1, epoch=3, shuffle=True, shard_id=s, num_shards=shards,
                           drop_last=False, batch_size=bs) for s in range(shards)]
    joined = torch.cat(parts)
    assert sorted(joined.tolist()) == list(range(n))
    for s, part in enumerate(parts):
        assert num_batches(n, batch_size=bs, shard_id=s, num_shards=shards, drop_last=False) == -(-len(part) // bs)


@pytest.mark.parametrize("n,shards,bs", [(10, 3, 2), (9, 2, 2), (100, 4, 7)])
def test_drop_last_gives_equal_step_counts(n, shards, bs):
    parts = [epoch_indices(n, seed=0, epoch=0, shuffle=True, shard_id=s, num_shards=shards,
                           drop_last=True, batch_size=bs) for s in range(shards)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) % bs == 0
    assert len(set(torch.cat(parts).tolist())) == sum(len(p) for p in parts)


def test_epochs_shuffle_differently_and_reproducibly():
    a = epoch_indices(50, seed=0, epoch=0, shuffle=True, shard_id=0, num_shards=1, drop_last=False, batch_size=8)
    b = epoch_indices(50, seed=0, epoch=1, shuffle=True, shard_id=0, num_shards=1, drop_last=False, batch_size=8)
    c = epoch_indices(50, seed=0, epoch=0, shuffle=True, shard_id=0, num_shards=1, drop_last=False, batch_size=8)
    assert not torch.equal(a, b) and torch.equal(a, c)
    seq = epoch_indices(50, seed=0, epoch=0, shuffle=False, shard_id=0, num_shards=1, drop_last=False, batch_size=8)
    assert seq.tolist() == list(range(50))


def test_bad_shard():
    with pytest.raises(ValueError, match="shard_id"):
        num_batches(10, batch_size=2, shard_id=2, num_shards=2, drop_last=False)


def test_held_out_positions_take_a_seeded_share_of_each_class():
    from pipelines.sampling import held_out_positions

    labels = np.repeat(np.arange(4), [20, 7, 2, 1])
    held = held_out_positions(labels, 0.1, seed=3)
    assert np.bincount(labels[held], minlength=4).tolist() == [2, 1, 1, 0]  # >= 1, never a whole class
    assert np.array_equal(held, np.sort(held)) and held.dtype == np.int64
    assert np.array_equal(held, held_out_positions(labels, 0.1, seed=3))
    assert not np.array_equal(held, held_out_positions(labels, 0.1, seed=4))
    with pytest.raises(ValueError, match="fraction"):
        held_out_positions(labels, 1.0, seed=0)
