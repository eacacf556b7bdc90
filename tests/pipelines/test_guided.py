"""G-SimCLR's guided batch plan (pipelines.sampling.guided_batches): shapes, coverage,
the documented per-batch bound, its optimality against a brute-force reference,
determinism, sharding and errors."""

import numpy as np
import pytest
import torch

from pipelines.sampling import guided_batch_bound, guided_batches, shard_batches


def uniform_labels(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, n)


def geometric_labels(n: int, k: int, seed: int = 0, ratio: float = 0.8) -> np.ndarray:
    """``n`` labels whose cluster sizes fall geometrically (the largest ~1/(1 - ratio)
    times the mean), every cluster non-empty, shuffled."""
    weights = ratio ** np.arange(k)
    sizes = np.maximum(1, np.floor(n * weights / weights.sum())).astype(int)
    sizes[0] += n - sizes.sum()
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(k), sizes))


def max_repeats(labels: np.ndarray, batches: np.ndarray) -> np.ndarray:
    """``[num_batches]``: the most times one label occurs in each batch."""
    lab = np.sort(labels[batches], axis=1)
    new_run = np.ones(lab.shape, dtype=bool)
    new_run[:, 1:] = lab[:, 1:] != lab[:, :-1]
    run_id = np.cumsum(new_run.ravel()) - 1
    return np.bincount(run_id)[run_id].reshape(lab.shape).max(axis=1)


def same_label_pairs(labels: np.ndarray, batches: np.ndarray) -> np.ndarray:
    return np.array([(c * (c - 1) // 2).sum() for c in (np.bincount(labels[b]) for b in batches)])


def feasible(counts: np.ndarray, caps: list[int], batch_size: int) -> bool:
    """Whether batches of ``batch_size`` with these per-label caps can be filled from
    clusters of ``counts`` (max-flow min-cut: every ``s`` batches with the smallest caps
    must find ``s * B`` images within their caps)."""
    reach = np.cumsum(np.sort(caps))
    return bool((np.minimum(counts[None, :], reach[:, None]).sum(1) >= np.arange(1, len(caps) + 1) * batch_size).all())


def reference_bound(counts: np.ndarray, batch_size: int) -> np.ndarray:
    """The documented bound by brute force: the epoch's cap M, the first cap m1, the
    number T of batches with it."""
    nb = int(counts.sum()) // batch_size
    worst = next(m for m in range(1, batch_size + 1) if feasible(counts, [m] * nb, batch_size))
    first = next(m for m in range(1, worst + 1) if feasible(counts, [m] + [worst] * (nb - 1), batch_size))
    t = max(t for t in range(1, nb + 1) if feasible(counts, [first] * t + [worst] * (nb - t), batch_size))
    return np.array([first] * t + [worst] * (nb - t), dtype=np.int64)


# (B, k): B < k, B == k, B > k (not a multiple), k == 1, and a large B.
CASES = [(16, 40), (32, 32), (64, 64), (64, 10), (8, 1), (100, 7)]


@pytest.mark.parametrize("make", [uniform_labels, geometric_labels], ids=["uniform", "geometric"])
@pytest.mark.parametrize("batch_size,k", CASES)
def test_plan_properties(make, batch_size, k):
    n = 5003
    labels = make(n, k, seed=batch_size + k)
    plan = guided_batches(labels, batch_size, seed=3, epoch=2)
    bound = guided_batch_bound(labels, batch_size)
    nb = n // batch_size
    assert plan.shape == (nb, batch_size) and plan.dtype == np.int64
    assert bound.shape == (nb,) and bound.dtype == np.int64
    assert plan.min() >= 0 and plan.max() < n
    assert len(np.unique(plan)) == plan.size  # each index at most once; n % B dropped
    assert (max_repeats(labels, plan) <= bound).all()
    counts = np.bincount(labels)
    np.testing.assert_array_equal(bound, reference_bound(counts[counts > 0], batch_size))
    assert (np.diff(bound) >= 0).all() and len(np.unique(bound)) <= 2
    # While the first cap holds, it is the ideal one when the clusters allow it.
    ideal = -(-batch_size // k)
    if feasible(counts, [ideal] + [bound[-1]] * (nb - 1), batch_size):
        assert bound[0] == ideal


@pytest.mark.parametrize("batch_size,k", [(16, 40), (32, 32), (64, 10), (60, 7), (8, 1)])
def test_balanced_clusters_keep_the_ideal_all_epoch(batch_size, k):
    labels = np.random.default_rng(0).permutation(np.arange(k * 97) % k)
    plan = guided_batches(labels, batch_size)
    ideal = -(-batch_size // k)
    assert (guided_batch_bound(labels, batch_size) == ideal).all()
    assert (max_repeats(labels, plan) <= ideal).all()
    if batch_size <= k:  # no two images of one pseudo-label in any batch
        assert all(len(set(labels[b].tolist())) == batch_size for b in plan)


def test_exhausted_clusters_documented_example():
    labels = np.repeat(np.arange(4), [10, 1, 1, 1])
    np.testing.assert_array_equal(guided_batch_bound(labels, 2), [1, 1, 1, 2, 2, 2])
    for epoch in range(5):
        lab = labels[guided_batches(labels, 2, epoch=epoch)]
        assert sorted(map(sorted, lab[:3].tolist())) == [[0, 1], [0, 2], [0, 3]]
        assert (lab[3:] == 0).all()


def test_bound_matches_brute_force_on_random_cluster_sizes():
    rng = np.random.default_rng(7)
    for _ in range(150):
        k = int(rng.integers(1, 9))
        counts = rng.geometric(rng.uniform(0.05, 0.8), size=k)
        batch_size = int(rng.integers(1, 13))
        labels = rng.permutation(np.repeat(rng.choice(50, k, replace=False), counts))
        bound = guided_batch_bound(labels, batch_size)
        want = reference_bound(counts, batch_size) if counts.sum() >= batch_size else np.zeros(0, np.int64)
        np.testing.assert_array_equal(bound, want, err_msg=f"counts={counts.tolist()} B={batch_size}")
        plan = guided_batches(labels, batch_size, seed=int(rng.integers(100)))
        assert plan.shape == (len(labels) // batch_size, batch_size)
        assert len(np.unique(plan)) == plan.size
        if len(plan):
            assert (max_repeats(labels, plan) <= bound).all()


@pytest.mark.parametrize("ratio", [0.8, 0.93])
@pytest.mark.parametrize("batch_size,k", [(64, 64), (64, 10), (16, 40)])
def test_same_label_pairs_near_the_even_spread_on_imbalanced_clusters(batch_size, k, ratio):
    """The tail is not left to the largest clusters: the pairs of images sharing a label
    stay near the floor of spreading every cluster evenly over the epoch, and below a plain
    permutation's, in the mean and in the worst batch."""
    labels = geometric_labels(20000, k, ratio=ratio)
    plan = guided_batches(labels, batch_size)
    nb = len(plan)
    q, r = np.divmod(np.bincount(labels), nb)
    even = (r * (q + 1) * q // 2 + (nb - r) * (q * (q - 1) // 2)).sum() / nb
    perm = np.random.default_rng(0).permutation(len(labels))[: nb * batch_size].reshape(nb, batch_size)
    pairs, perm_pairs = same_label_pairs(labels, plan), same_label_pairs(labels, perm)
    assert pairs.mean() <= 1.25 * even and pairs.mean() < perm_pairs.mean()
    assert pairs.max() < perm_pairs.max() and max_repeats(labels, plan).max() <= max_repeats(labels, perm).max()


def test_deterministic_per_seed_and_epoch():
    labels = geometric_labels(3000, 20)
    a = guided_batches(labels, 32, seed=1, epoch=4)
    np.testing.assert_array_equal(a, guided_batches(labels, 32, seed=1, epoch=4))
    for other in (guided_batches(labels, 32, seed=1, epoch=5), guided_batches(labels, 32, seed=2, epoch=4)):
        assert not np.array_equal(a, other)
        assert (np.sort(a, axis=1) != np.sort(other, axis=1)).any(axis=1).mean() > 0.9  # other batches


def test_dropped_tail():
    labels = uniform_labels(1007, 13)
    plan = guided_batches(labels, 10)
    assert plan.shape == (100, 10)
    assert len(np.setdiff1d(np.arange(1007), plan)) == 7
    assert guided_batches(labels[:5], 10).shape == (0, 10)
    assert guided_batch_bound(labels[:5], 10).shape == (0,)


def test_label_values_and_inputs():
    labels = np.array([7, 3, 100, 42, 7, 3, 100, 42, 7, 3])  # k = 4, any non-negative values
    plan = guided_batches(labels, 4)
    assert plan.shape == (2, 4) and (max_repeats(labels, plan) == 1).all()
    np.testing.assert_array_equal(guided_batch_bound(labels, 4), [1, 1])
    np.testing.assert_array_equal(guided_batches(torch.from_numpy(labels), 4), plan)
    np.testing.assert_array_equal(guided_batches(labels.astype(np.uint8).tolist(), 4), plan)


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_shards_make_up_the_global_batch(shards):
    labels = geometric_labels(4000, 64)
    plan = guided_batches(labels, 64, seed=5)
    parts = [shard_batches(plan, s, shards) for s in range(shards)]
    assert all(p.shape == (len(plan), 64 // shards) and p.dtype == np.int64 for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), plan)
    for b in range(len(plan)):  # the processes' slices of a global batch are that batch
        assert set(np.concatenate([p[b] for p in parts]).tolist()) == set(plan[b].tolist())


def test_shard_errors():
    plan = guided_batches(uniform_labels(100, 10), 6)
    with pytest.raises(ValueError, match="not divisible by num_shards=4"):
        shard_batches(plan, 0, 4)
    with pytest.raises(ValueError, match="shard_id"):
        shard_batches(plan, 2, 2)
    with pytest.raises(ValueError, match="2-D"):
        shard_batches(plan[0], 0, 1)


@pytest.mark.parametrize("labels,batch_size,match", [
    (np.zeros(10, int), 0, "batch_size must be an integer >= 1"),
    (np.zeros(10, int), -3, "batch_size must be an integer >= 1"),
    (np.zeros(10, int), 2.0, "batch_size must be an integer >= 1"),
    (np.zeros(0, int), 4, "empty"),
    (np.array([0, 1, -1, 2]), 2, "must be >= 0, got -1"),
    (np.zeros((4, 2), int), 2, r"1-D \[N\], got shape \(4, 2\)"),
    (np.zeros(4), 2, "must be integers, got dtype float64"),
])
def test_errors(labels, batch_size, match):
    for fn in (guided_batches, guided_batch_bound):
        with pytest.raises(ValueError, match=match):
            fn(labels, batch_size)
