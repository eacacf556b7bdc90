"""Which samples a process reads in an epoch: shuffling, sharding, batching, and the
batches guided by pseudo-labels of G-SimCLR.

Shared by the backends that index in-memory data, so that every backend gives a
process the same share of an epoch for the same (seed, epoch, shard).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(seed: int, *parts: int | str) -> int:
    """A 63-bit seed for a stream named by ``parts`` (e.g. ``"order", epoch``).

    Hashing keeps streams of neighbouring seeds, ranks and epochs unrelated.
    """
    text = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator(seed: int, *parts: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, *parts))


def check_shard(shard_id: int, num_shards: int) -> None:
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ValueError(f"need 0 <= shard_id < num_shards, got shard_id={shard_id}, num_shards={num_shards}")


def num_batches(n: int, *, batch_size: int, shard_id: int, num_shards: int, drop_last: bool) -> int:
    """Batches per epoch for this shard.

    With ``drop_last`` every shard reports the same count (from the smallest share), so
    the processes of a data-parallel run take the same number of steps.
    """
    check_shard(shard_id, num_shards)
    if drop_last:
        return (n // num_shards) // batch_size
    share = len(range(shard_id, n, num_shards))
    return -(-share // batch_size)


def epoch_indices(
    n: int, *, seed: int, epoch: int, shuffle: bool, shard_id: int, num_shards: int, drop_last: bool, batch_size: int
) -> torch.Tensor:
    """Dataset positions this shard reads in ``epoch``, in order: ``[M]`` int64.

    One permutation per epoch, the same on every shard, dealt round-robin: the shares
    are disjoint and together cover the dataset (up to the dropped tail with
    ``drop_last``).
    """
    check_shard(shard_id, num_shards)
    order = torch.randperm(n, generator=generator(seed, "order", epoch)) if shuffle else torch.arange(n)
    share = order[shard_id::num_shards]
    keep = num_batches(n, batch_size=batch_size, shard_id=shard_id, num_shards=num_shards, drop_last=drop_last)
    return share[: keep * batch_size] if drop_last else share


def held_out_positions(labels, fraction: float, seed: int) -> np.ndarray:
    """Sorted int64 positions of a seeded ``fraction`` of each class of ``labels`` ``[N]``,
    held out for validation: ``round(fraction * n)`` of a class of ``n``, at least one and
    never the whole class (none of a class of one)."""
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = min(len(members) - 1, max(1, round(fraction * len(members))))
        held.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(held or [np.zeros(0, np.int64)])).astype(np.int64)


def balanced_subset(labels: np.ndarray, num_labels: int, num_classes: int, seed: int) -> np.ndarray:
    """``[num_labels]`` int64 sorted positions: ``num_labels / num_classes`` images of
    each class drawn without replacement with ``seed`` (as the reference ports draw them)."""
    labels = np.asarray(labels)
    per_class = num_labels // num_classes
    if per_class * num_classes != num_labels or per_class < 1:
        raise ValueError(f"{num_labels} labels do not split evenly over {num_classes} classes")
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} training images, fewer than {per_class} labels per class")
        picks.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(picks)).astype(np.int64)


# ---------------------------------------------------------------- G-SimCLR: batches guided by pseudo-labels


def _cluster_counts(pseudo_labels, batch_size: int) -> np.ndarray:
    """The labels as a checked ``[N]`` int64 array (``batch_size`` checked too)."""
    labels = np.asarray(pseudo_labels)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if labels.ndim != 1:
        raise ValueError(f"pseudo_labels must be 1-D [N], got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError("pseudo_labels is empty: no images to batch")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"pseudo_labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0:
        raise ValueError(f"pseudo_labels must be >= 0, got {labels.min()}")
    return labels.astype(np.int64, copy=False)


def _min_cap(remaining: np.ndarray, batch_size: int) -> int:
    """Smallest ``m`` with ``sum(min(remaining, m)) >= batch_size``: the least repetition of a
    label with which the remaining images can fill one batch."""
    lo, hi = 1, batch_size
    while lo < hi:
        mid = (lo + hi) // 2
        if np.minimum(remaining, mid).sum() >= batch_size:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _level_take(remaining: np.ndarray, most: np.ndarray, total: int, rng) -> np.ndarray:
    """Takes ``total`` images, at most ``most[j]`` from cluster ``j``, from the largest
    clusters first: what remains is levelled down to a common height ``L`` where ``most``
    allows. ``[K]`` int64 counts taken; clusters tied at the level get the last images at random
    (the first ones of the tie when ``rng`` is None; the counts left are the same multiset)."""
    floor = remaining - most

    def left(level):
        return np.maximum(floor, np.minimum(remaining, level))

    lo, hi = 0, int(remaining.max())  # taken(0) = sum(most) >= total > taken(max) = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (remaining - left(mid)).sum() >= total:
            lo = mid
        else:
            hi = mid
    take = remaining - left(lo + 1)
    tied = np.flatnonzero(left(lo + 1) > left(lo))
    extra = total - int(take.sum())
    take[rng.permutation(tied)[:extra] if rng is not None else tied[:extra]] += 1
    return take


def _fits(remaining: np.ndarray, batch_size: int, cap: int, t: int, need: int, worst: int) -> bool:
    """Whether ``t`` batches with cap ``cap`` can be made now and the ``need - t`` after them
    with cap ``worst`` (the next ones taken from the largest clusters, as the plan does)."""
    most = np.minimum(remaining, cap * t)
    if most.sum() < t * batch_size:
        return False
    rest = need - t
    if rest == 0:
        return True
    left = remaining - _level_take(remaining, most, t * batch_size, None)
    return np.minimum(left, worst * rest).sum() >= rest * batch_size


def _phases(counts: np.ndarray, batch_size: int, rng=None):
    """Yields ``(cap, num_batches, take)`` for the (one or two) phases of the guided plan
    (see :func:`guided_batches`); ``take[j]`` images of cluster ``j`` go into the phase."""
    remaining = counts.astype(np.int64)
    need = int(remaining.sum()) // batch_size
    if need == 0:
        return
    # The smallest cap every batch of the epoch can obey at once.
    lo, worst = 1, batch_size
    while lo < worst:
        mid = (lo + worst) // 2
        if np.minimum(remaining, mid * need).sum() >= need * batch_size:
            worst = mid
        else:
            lo = mid + 1
    # The first phase: the smallest cap for one batch that leaves the rest within `worst` ...
    lo, hi = _min_cap(remaining, batch_size), worst
    while lo < hi:
        mid = (lo + hi) // 2
        if _fits(remaining, batch_size, mid, 1, need, worst):
            hi = mid
        else:
            lo = mid + 1
    first = lo
    # ... and as many batches with it as that allows (fewer batches is never harder).
    lo, hi = 1, need
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _fits(remaining, batch_size, first, mid, need, worst):
            lo = mid
        else:
            hi = mid - 1
    # The second phase: all the other batches with cap `worst`.
    for cap, t in ((first, lo), (worst, need - lo)):
        if t:
            take = _level_take(remaining, np.minimum(remaining, cap * t), t * batch_size, rng)
            yield cap, t, take
            remaining = remaining - take


def guided_batch_bound(pseudo_labels, batch_size: int) -> np.ndarray:
    """The most times one pseudo-label may appear in each batch of :func:`guided_batches`:
    ``[N // batch_size]`` int64, ``m1`` then ``M`` (see there), the same for every seed and
    epoch (it depends on the cluster sizes only)."""
    labels = _cluster_counts(pseudo_labels, batch_size)
    counts = np.unique(labels, return_counts=True)[1]
    caps = [np.full(t, cap, dtype=np.int64) for cap, t, _ in _phases(counts, batch_size)]
    return np.concatenate(caps) if caps else np.zeros(0, dtype=np.int64)


def guided_batches(pseudo_labels, batch_size: int, *, seed: int = 0, epoch: int = 0) -> np.ndarray:
    """G-SimCLR's global batches for one epoch, guided by k-means pseudo-labels:
    ``[N // batch_size, batch_size]`` int64 dataset indices. Every process builds the same
    plan and takes its part with :func:`shard_batches`.

    G-SimCLR (Chakraborty et al., 2020, arXiv:2009.12007): "With this apriori information
    we batch images, where no two images from the same category are to be found." With
    ``B = batch_size`` and ``k`` distinct labels (any non-negative integers), a batch
    should hold each label at most ``ceil(B / k)`` times (once when ``B <= k``). That holds
    for the whole epoch only if no cluster is larger than ``N // B`` images times that cap;
    when clusters are unequal, some batches must repeat a label more. Keeping the ideal
    "while the clusters last" (the authors' notebooks) ends the epoch with batches of
    one or two labels; instead the plan has two phases, built from ``c_j``, the images of
    label ``j``, and ``nb = N // B``:

    - ``M``, the epoch's cap: the smallest ``m`` with ``sum_j min(c_j, m * nb) >= nb * B``.
      No batch holds a label more than ``M`` times, and no plan of ``nb`` batches can do
      with less.
    - Phase 1, ``T`` batches with cap ``m1``: ``m1`` is the smallest cap with which one
      batch can be made while the rest of the epoch stays within ``M`` (1 when ``B <= k``
      and ``ceil(B / k)`` when ``B > k``, unless the clusters are too unequal for that),
      and ``T`` the most batches with cap ``m1`` that still leave the rest within ``M``.
      Its images come from the largest clusters (levelled down together, ties at random,
      at most ``m1 * T`` from one).
    - Phase 2, the other ``nb - T`` batches with cap ``M``: each cluster's remaining images
      (levelled the same way, so the ``N % B`` images dropped come from the smallest) are
      spread evenly over them, a cluster landing ``floor(x_j / (nb - T))`` or one more times
      in each; this keeps the same-label pairs of a batch near the fewest possible.

    Guarantee: batch ``i`` holds no pseudo-label more than
    ``guided_batch_bound(pseudo_labels, B)[i]`` times; the bound is ``m1`` for the first
    ``T`` batches and ``M`` after. Equal clusters (or any with ``c_j <= nb * m1``) keep
    ``m1`` for the whole epoch. E.g. cluster sizes (10, 1, 1, 1) with ``B = 2``: ``nb = 6``,
    ``M = 2``, bounds ``[1, 1, 1, 2, 2, 2]`` (the big cluster paired with each singleton,
    then with itself).

    Always ``N // B`` batches (fewer than ``B`` images give an empty ``[0, B]`` plan); every
    index at most once. Random per ``(seed, epoch)`` (a numpy Generator on
    ``derive_seed(seed, "guided", epoch)``) and different across epochs: which images of a
    cluster go where, tie-breaks, the cluster order, the order of the batches within a
    phase and of the images within a batch. Phase 1 comes first in the epoch.
    """
    labels = _cluster_counts(pseudo_labels, batch_size)
    n = labels.size
    rng = np.random.default_rng(derive_seed(seed, "guided", epoch))
    # Indices grouped by label, in random order inside each label (one stable sort).
    order = rng.permutation(n)
    by_label = order[np.argsort(labels[order], kind="stable")]
    sorted_labels = labels[by_label]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    counts = np.diff(np.r_[starts, n])
    used = np.zeros_like(counts)
    blocks = [np.zeros((0, batch_size), dtype=np.int64)]
    for _, t, take in _phases(counts, batch_size, rng):
        clusters = rng.permutation(np.flatnonzero(take))
        lens = take[clusters]
        first = starts[clusters] + used[clusters]
        pos = np.repeat(first - (np.cumsum(lens) - lens), lens) + np.arange(t * batch_size)
        # Position p of the layout goes to batch p % t: a cluster's run of <= m * t images
        # lands at most m times in one batch.
        block = by_label[pos].reshape(batch_size, t).T
        blocks.append(block[rng.permutation(t)])
        used += take
    return rng.permuted(np.concatenate(blocks), axis=1).astype(np.int64, copy=False)


def shard_batches(batches: np.ndarray, shard_id: int, num_shards: int) -> np.ndarray:
    """This process's part of every global batch: the contiguous slice ``shard_id`` of
    ``num_shards`` equal slices, ``[num_batches, batch_size // num_shards]``. The slices of
    the processes together are the global batch."""
    check_shard(shard_id, num_shards)
    batches = np.asarray(batches)
    if batches.ndim != 2:
        raise ValueError(f"batches must be 2-D [num_batches, batch_size], got shape {batches.shape}")
    if batches.shape[1] % num_shards:
        raise ValueError(f"batch_size {batches.shape[1]} is not divisible by num_shards={num_shards}")
    width = batches.shape[1] // num_shards
    return np.ascontiguousarray(batches[:, shard_id * width:(shard_id + 1) * width])
