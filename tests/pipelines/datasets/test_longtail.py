import numpy as np
import pytest

from pipelines.datasets.longtail import longtail_counts, longtail_indices


def test_exp_counts_cifar10_lt_100():
    # CIFAR-10-LT, rho = 0.01: the well-known 12406-image split.
    counts = longtail_counts(5000, 10, "exp", 0.01)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert counts == [int(5000 * 0.01 ** (i / 9)) for i in range(10)]
    assert sum(counts) == 12406


def test_exp_counts_cifar100():
    counts = longtail_counts(500, 100, "exp", 0.01)
    assert counts[0] == 500 and counts[-1] == 5
    assert counts == [int(500 * 0.01 ** (i / 99)) for i in range(100)]
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_step_counts():
    assert longtail_counts(5000, 10, "step", 0.01) == [5000] * 5 + [50] * 5
    # Odd K: the middle class gets the small count, so every class has one.
    assert longtail_counts(100, 5, "step", 0.1) == [100, 100, 10, 10, 10]


def test_none_and_one_class():
    assert longtail_counts(7, 3, "none", 0.5) == [7, 7, 7]
    assert longtail_counts(7, 1, "exp", 0.5) == [7]


@pytest.mark.parametrize("kind", ["Exp", "linear", ""])
def test_bad_kind_names_the_key(kind):
    with pytest.raises(ValueError, match="data.longtail"):
        longtail_counts(10, 10, kind, 0.1)


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5])
def test_bad_ratio_names_the_key(ratio):
    with pytest.raises(ValueError, match="data.imbalance_ratio"):
        longtail_indices(np.arange(20) % 2, "exp", ratio)


def _balanced_labels(per_class, k, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(k), per_class))


def test_indices_match_counts_sorted_int64():
    labels = _balanced_labels(100, 10)
    idx = longtail_indices(labels, "exp", 0.05)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    got = np.bincount(labels[idx], minlength=10).tolist()
    assert got == longtail_counts(100, 10, "exp", 0.05)


def test_first_in_dataset_order_without_seed():
    labels = _balanced_labels(20, 4, seed=1)
    idx = longtail_indices(labels, "step", 0.25, seed=None)
    expected = np.sort(np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in enumerate([20, 20, 5, 5])]))
    np.testing.assert_array_equal(idx, expected)


def test_default_selection_is_ldam_drw():
    """The LDAM-DRW code: np.random.seed(0), then per class shuffle its indices and keep the head."""
    labels = _balanced_labels(50, 10, seed=2)
    saved = np.random.get_state()
    try:
        np.random.seed(0)
        chosen = []
        for c, n in enumerate(longtail_counts(50, 10, "exp", 0.1)):
            where = np.where(labels == c)[0]
            np.random.shuffle(where)
            chosen.append(where[:n])
    finally:
        np.random.set_state(saved)
    np.testing.assert_array_equal(longtail_indices(labels, "exp", 0.1), np.sort(np.concatenate(chosen)))
    assert not np.array_equal(longtail_indices(labels, "exp", 0.1), longtail_indices(labels, "exp", 0.1, seed=None))


def test_n_max_is_the_smallest_class_count():
    labels = np.array([0] * 10 + [1] * 8 + [2] * 12)
    idx = longtail_indices(labels, "exp", 0.5)
    assert np.bincount(labels[idx]).tolist() == longtail_counts(8, 3, "exp", 0.5) == [8, 5, 4]


def test_absent_class_does_not_set_n_max():
    labels = np.array([0] * 8 + [2] * 8)  # class 1 has no sample
    idx = longtail_indices(labels, "exp", 0.25, num_classes=3)
    assert np.bincount(labels[idx], minlength=3).tolist() == [8, 0, 2]
