"""Restart cost of a folder dataset: decoding every file with PIL against reading the decode cache.

    python -m bench.decode_cache [--n 20000] [--repeats 3] [--json out.json] [--quick]

A Tiny-ImageNet-like tree is written to a temporary folder: ``--n`` 64x64 JPEGs (quality
90) of the built-in procedural images in 200 class folders. Then, side by side:
- decode: ``DATASETS["imagefolder"]`` with ``data.decode_cache = false`` (list the files,
  PIL-decode every one on every core this process may use), what a restart cost before;
- cached: the same with the cache filled (list the files, stat each, read and checksum
  the array), what a restart costs now.
The first cached read (decode + write the entry) is timed once as ``fill``.

Each row: seconds (median of interleaved runs, min..max) and ``x_decode`` (seconds /
decode's). Target: a restart at least 5x faster than decoding. The speed-up grows with
the image size on disk (Tiny-ImageNet's 110,000 files: 1.35 GB decoded).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import (
    bench_parser, check_target, header, load_average, print_table, print_targets, time_interleaved, write_json,
)
from gssl_fast.sections import DataConfig
from pipelines.datasets import DATASETS, make_shapes
from pipelines.datasets.testing import write_image_folder

CLASSES = 200


def write_tree(root: Path, n: int) -> Path:
    shapes = make_shapes(n, image_size=64, seed=0)
    labels = np.arange(n) % CLASSES
    return write_image_folder(root, shapes.images, labels, ext="jpg")


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--n", type=int, default=20000, help="images in the tree")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per variant")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 1000, 2
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_tree(Path(tmp) / "tree", args.n)
        base = dict(name="imagefolder", root=str(root), image_size=64, cache_dir=str(Path(tmp) / "cache"))
        decode_cfg, cached_cfg = DataConfig(**base, decode_cache=False), DataConfig(**base)
        start = time.perf_counter()
        filled = DATASETS["imagefolder"](cached_cfg, "train")
        fill = time.perf_counter() - start
        impls = {"decode": lambda: DATASETS["imagefolder"](decode_cfg, "train"),
                 "cached": lambda: DATASETS["imagefolder"](cached_cfg, "train")}
        assert np.array_equal(impls["decode"]().images, filled.images)
        times = time_interleaved(impls, repeats=args.repeats, warmup=1, device="cpu")
    rows = [{"impl": name, "n": args.n, "seconds_median": statistics.median(t), "seconds_min": min(t),
             "seconds_max": max(t), "repeats": len(t)} for name, t in times.items()]
    rows.append({"impl": "fill (decode + write the entry)", "n": args.n, "seconds_median": fill, "repeats": 1})
    for r in rows:
        r["x_decode"] = r["seconds_median"] / rows[0]["seconds_median"]
    info = {**header(), "load_avg_1min_before": load_before, "image_size": 64, "classes": CLASSES}
    cols = ["impl", "n", "seconds_median", "seconds_min", "seconds_max", "repeats", "x_decode"]
    print_table("restart cost of a folder dataset (seconds to load it)", info, rows, cols)
    speedup = rows[0]["seconds_median"] / rows[1]["seconds_median"]
    targets = [check_target("restart from the cache, x faster than decoding", speedup, 5.0)]
    print_targets(targets)
    write_json(args.json, "decode_cache", {**info, "targets": targets}, rows)


if __name__ == "__main__":
    main()
