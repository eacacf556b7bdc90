"""Long-tailed subsampling of a balanced train split (LDAM-DRW, Cao et al. 2019).

Class ``i`` keeps ``n_i`` of its images:

    exp:  n_i = int(n_max * rho ** (i / (K - 1)))      (rho = imbalance_ratio = n_min / n_max)
    step: n_i = n_max for the first K // 2 classes, int(n_max * rho) for the others

The LDAM-DRW code (``imbalance_cifar.py``, which the G-SSL long-tailed experiments use)
seeds NumPy's legacy generator with 0, then for each class in label order shuffles the
class's indices and keeps the first ``n_i``. :func:`longtail_indices` does the same by
default, so the same CIFAR files give the authors' exact subset.
"""

from __future__ import annotations

import numpy as np

KINDS = ("none", "exp", "step")


def _check(kind: str, ratio: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"data.longtail = {kind!r} is not a long-tail kind; valid: {', '.join(KINDS)}")
    if not 0.0 < float(ratio) <= 1.0:
        raise ValueError(
            f"data.imbalance_ratio = {ratio!r} must lie in (0, 1] (n_min / n_max, e.g. 0.01)"
        )


def longtail_counts(n_max: int, num_classes: int, kind: str, ratio: float) -> list[int]:
    """Images kept per class, class 0 first (the largest). ``kind="none"`` keeps ``n_max`` each.

    For an odd number of classes, ``step`` gives the extra class the small count (the
    LDAM-DRW code would return one count too few there).
    """
    _check(kind, ratio)
    if num_classes < 1 or n_max < 0:
        raise ValueError(f"need num_classes >= 1 and n_max >= 0, got {num_classes} and {n_max}")
    if kind == "none" or num_classes == 1:
        return [int(n_max)] * num_classes
    if kind == "exp":
        return [int(n_max * ratio ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    head = num_classes // 2
    return [int(n_max)] * head + [int(n_max * ratio)] * (num_classes - head)


def longtail_indices(
    labels: np.ndarray,
    kind: str,
    ratio: float,
    *,
    num_classes: int | None = None,
    seed: int | None = 0,
) -> np.ndarray:
    """Indices of a long-tailed subset of a dataset, ``[M]`` int64, sorted.

    labels: ``[N]`` integer class labels.
    num_classes: ``K``; default ``labels.max() + 1``.
    seed: as in LDAM-DRW: a ``np.random.RandomState(seed)`` shuffles each class's indices
        (classes in label order, one shuffle each) before the first ``n_i`` are kept.
        ``None`` keeps the first ``n_i`` of each class in dataset order.

    ``n_max`` is the smallest class count of the input (classes without samples aside),
    so a balanced split with ``n`` images per class keeps ``n_0 = n``.
    """
    _check(kind, ratio)
    labels = np.asarray(labels).astype(np.int64, copy=False)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty [N] array, got shape {labels.shape}")
    k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    counts = np.bincount(labels, minlength=k)
    present = counts[counts > 0]
    keep = longtail_counts(int(present.min()) if present.size else 0, k, kind, ratio)
    rng = np.random.RandomState(seed) if seed is not None else None
    chosen = []
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        if rng is not None:
            rng.shuffle(idx)
        chosen.append(idx[: keep[c]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)
