"""Cost and quality of G-SimCLR's guided batch plan against a plain permutation.

    python -m bench.guided_plan [--n 50000] [--repeats 21] [--json out.json] [--quick]

One epoch's plan of global batches, on the CPU (``--device`` is ignored: the plan is
numpy), for CIFAR-sized ``--n`` and (batch, k) pseudo-label cases: (64, 64) as in the
notebooks, (512, 10), (256, 100) on uniform random labels, and (64, 64) on imbalanced
clusters (sizes falling geometrically, ratio 0.95: the largest ~3x the mean, the
smallest ~0.1x).
- guided: ``pipelines.sampling.guided_batches(labels, B, seed=0, epoch=0)``
- permutation (ceiling): ``default_rng(0).permutation(n)[: nb * B].reshape(nb, B)``

Each row: seconds per epoch plan (median of interleaved repeated runs after warm-up,
min..max), ``x_permutation`` (guided / permutation seconds), and what the plan buys:
``max_repeat`` (the most images of one pseudo-label in any batch), ``pairs_per_batch``
(mean pairs of images sharing a pseudo-label in a batch, the likely false negatives of
NT-Xent) and ``ideal_batches`` (the share of batches holding no label more than
``ceil(B / k)`` times).

Target: guided well under a second per plan at n = 50,000.
"""

from __future__ import annotations

import statistics

import numpy as np

from bench.common import (
    bench_parser, check_target, header, load_average, print_table, print_targets, time_interleaved, write_json,
)
from pipelines.sampling import guided_batches

CASES = [(64, 64, "uniform"), (512, 10, "uniform"), (256, 100, "uniform"), (64, 64, "geometric")]


def make_labels(n: int, k: int, kind: str) -> np.ndarray:
    """``[n]`` pseudo-labels in ``0..k-1``: uniform random, or geometric cluster sizes."""
    rng = np.random.default_rng(1)
    if kind == "uniform":
        return rng.integers(0, k, n)
    weights = 0.95 ** np.arange(k)
    sizes = np.maximum(1, np.floor(n * weights / weights.sum())).astype(int)
    sizes[0] += n - sizes.sum()
    return rng.permutation(np.repeat(np.arange(k), sizes))


def quality(labels: np.ndarray, batches: np.ndarray, k: int) -> dict:
    """Per-batch label repetition of a plan, vectorized over batches."""
    nb, b = batches.shape
    counts = np.zeros((nb, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(nb), b), labels[batches].ravel()), 1)
    most = counts.max(axis=1)
    return {"max_repeat": int(most.max()), "pairs_per_batch": float((counts * (counts - 1) // 2).sum(1).mean()),
            "ideal_batches": float((most <= -(-b // k)).mean())}


def rows_for(n: int, batch: int, k: int, kind: str, repeats: int) -> list[dict]:
    labels = make_labels(n, k, kind)
    nb = n // batch
    impls = {
        "guided": lambda: guided_batches(labels, batch, seed=0, epoch=0),
        "permutation (ceiling)": lambda: np.random.default_rng(0).permutation(n)[: nb * batch].reshape(nb, batch),
    }
    times = time_interleaved(impls, repeats=repeats, warmup=2, device="cpu")
    rows = []
    for name, fn in impls.items():
        t = times[name]
        rows.append({"impl": name, "n": n, "batch": batch, "k": k, "labels": kind,
                     "seconds_median": statistics.median(t), "seconds_min": min(t), "seconds_max": max(t),
                     "repeats": len(t), **quality(labels, fn(), k)})
    base = rows[1]["seconds_median"]
    for r in rows:
        r["x_permutation"] = r["seconds_median"] / base
    return rows


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--n", type=int, default=50000, help="images in the epoch")
    p.add_argument("--repeats", type=int, default=21, help="interleaved timed runs per row")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 5000, 5
    load_before = load_average()
    rows = [r for batch, k, kind in CASES for r in rows_for(args.n, batch, k, kind, args.repeats)]
    info = {**header(), "load_avg_1min_before": load_before}
    cols = ["impl", "n", "batch", "k", "labels", "seconds_median", "seconds_min", "seconds_max", "x_permutation",
            "max_repeat", "pairs_per_batch", "ideal_batches"]
    print_table("guided batch plan (seconds per epoch plan)", info, rows, cols)
    slowest = max(r["seconds_median"] for r in rows if r["impl"] == "guided")
    targets = [check_target(f"guided seconds per plan, n={args.n}, slowest case", slowest, 1.0, at_least=False)]
    print_targets(targets)
    write_json(args.json, "guided_plan", {**info, "targets": targets}, rows)


if __name__ == "__main__":
    main()
