"""FFCV loader throughput: crop, flip and the quadrant (localizable) transform inside
FFCV's pipeline vs a torch DataLoader doing the same per sample, on the same in-memory
CIFAR-sized data.

    python -m bench.ffcv_loader [--n 10000] [--batch 256] [--workers 2] [--ffcv-threads 1 2] [--json out.json]

Rows, images/s of a whole epoch delivered to the training process (median of repeated
epochs after warm-up ones; FFCV's first epoch compiles and is not timed):
- ffcv + quadrant: ``pipelines.ffcv.make_loader`` (raw .beton, crop with padding 4, flip,
  localizable transform, normalization) with each of ``--ffcv-threads`` threads
- ffcv, no quadrant: the same without the localizable transform (``tasks=()``)
- torch DataLoader, per sample: ``--workers`` worker processes, each sample through
  torchvision's ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip``, the authors'
  per-sample quadrant loop (``pipelines.localizable.reference_localizable``) and ``Normalize``
- pipelines.torch, batched: the project's in-memory loader (whole-batch tensor ops)
- copy (ceiling): slicing and copying the uint8 batches, nothing else
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench._loaders import PerSampleArrays, PerSampleTransform, per_sample_loader
from bench.common import header, print_table, summarize, time_runs, write_json
from pipelines.datasets.arrays import CIFAR_MEAN, CIFAR_STD

ALL_TASKS = ("rotation", "flip", "perm")


def epoch(loader) -> None:
    for _ in loader:
        pass


class CopyBatches:
    """The ceiling: each epoch slices and copies the uint8 batches, nothing else."""

    def __init__(self, images: np.ndarray, batch: int):
        self.images, self.batch = torch.from_numpy(images), batch

    def __iter__(self):
        for i in range(0, len(self.images), self.batch):
            yield self.images[i : i + self.batch].clone()


def loaders(images: np.ndarray, labels: np.ndarray, beton: Path, args) -> dict:
    from pipelines.ffcv import make_loader as ffcv_loader
    from pipelines.torch import make_loader as torch_loader

    common = dict(batch_size=args.batch, device="cpu", drop_last=False)
    # Torch-only rows first: the DataLoader's processes fork before numba starts its
    # threads, and idle numba threads would otherwise compete with torch's for the cores.
    rows = {
        "copy (ceiling)": CopyBatches(images, args.batch),
        "pipelines.torch, batched": torch_loader((images, labels), **common),
        f"torch DataLoader, per sample ({args.workers} workers)": per_sample_loader(
            PerSampleArrays(images, labels, PerSampleTransform(images.shape[1], CIFAR_MEAN, CIFAR_STD, ALL_TASKS),
                            pil=False), batch_size=args.batch, workers=args.workers, drop_last=False),
    }
    for w in args.ffcv_threads:
        rows[f"ffcv + quadrant ({w} threads)"] = ffcv_loader(beton, num_workers=w, **common)
        rows[f"ffcv, no quadrant ({w} threads)"] = ffcv_loader(beton, tasks=(), num_workers=w, **common)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10000, help="images (random 32x32 RGB, 10 classes)")
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--ffcv-threads", type=int, nargs="+", default=[1, 2], help="FFCV thread counts to run")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the consuming process")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="smoke mode: small sizes, few repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.ffcv_threads = 1024, 2, [1]
    torch.set_num_threads(args.threads)
    from pipelines.ffcv import convert

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n, args.side, args.side, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.n)
    with tempfile.TemporaryDirectory() as tmp:
        beton = convert((images, labels), Path(tmp) / "bench.beton")
        rows = []
        for name, loader in loaders(images, labels, beton, args).items():
            times = time_runs(lambda: epoch(loader), repeats=args.repeats, warmup=2)
            rows.append({"loader": name, "images": args.n, "batch": args.batch, **summarize(times, args.n)})
    base = next(r for r in rows if r["loader"].startswith("torch DataLoader"))["items_per_s"]
    for r in rows:
        r["x_vs_dataloader"] = r["items_per_s"] / base
    info = header()
    cols = ["loader", "images", "batch", "items_per_s", "items_per_s_min", "items_per_s_max", "x_vs_dataloader"]
    print_table("loader throughput on the CPU (images/s, one epoch)", info, rows, cols)
    write_json(args.json, "ffcv_loader", info, rows)


if __name__ == "__main__":
    main()
