"""Loader throughput on a JPEG folder: the DALI pipeline with the quadrant transform vs a
torchvision ImageFolder + DataLoader doing the same work per sample, and DALI with vs
without the quadrant transform.

    python -m bench.dali_loader [--images 2000] [--workers 2] [--json out.json]

Writes a Tiny-ImageNet-shaped folder of 64 x 64 JPEGs (the built-in shapes dataset) in a
temporary directory. Every row decodes, crops with 4 px zero padding, flips, applies the
localizable transform (rotation, flip and perm tasks) unless the row says otherwise, and
normalizes to float32 ``[B, 3, 64, 64]``. Rows: images/s (median of repeated runs, with
min..max), steady state: each run takes the next batches of one long epoch (the file list
repeated), after warm-up batches; ``start_s`` is the time to the first batch of an epoch
(pipeline build / worker start), paid once per epoch and not in images/s;
``cpu_us_per_image`` is this process's CPU time per image (DALI rows: all of DALI's
threads), steadier than wall time when other processes share the cores.

Targets of issue 3: DALI with the transform >= 2x the torchvision loader; the transform
costs <= half of the DALI pipeline's time without it (``transform_cost``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import torch

from bench._loaders import PerSampleFiles, PerSampleTransform, per_sample_loader, time_loader, write_jpeg_folder
from bench.common import header, print_table, summarize, write_json
from pipelines.datasets.arrays import IMAGENET_MEAN, IMAGENET_STD
from pipelines.datasets.folders import FileList, list_folder

SIDE = 64


def torchvision_loader(files: FileList, batch_size: int, workers: int, tasks):
    """The papers' data path: ImageFolder's open + convert, PIL crop and flip, the
    authors' per-sample quadrant loop, Normalize, in ``workers`` DataLoader workers."""
    transform = PerSampleTransform(SIDE, IMAGENET_MEAN, IMAGENET_STD, tasks)
    return per_sample_loader(PerSampleFiles(files, transform), batch_size=batch_size, workers=workers, prefetch=4)


def dali_loader(files: FileList, batch_size: int, threads: int, tasks, augment=True):
    from pipelines.dali import make_loader

    return make_loader(files, batch_size=batch_size, image_size=SIDE, tasks=tasks, augment=augment,
                       drop_last=True, num_threads=threads, device="cpu")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000, help="JPEG files written")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=4, help="batches per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per loader and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers and DALI threads")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="smoke mode: small sizes, few repeats")
    args = p.parse_args(argv)
    tasks = ("rotation", "flip", "perm")
    loaders = {
        "torchvision ImageFolder + DataLoader, transform": lambda f: torchvision_loader(f, args.batch, args.workers, tasks),
        "torchvision ImageFolder + DataLoader, no transform": lambda f: torchvision_loader(f, args.batch, args.workers, ()),
        "dali files, transform": lambda f: dali_loader(f, args.batch, args.workers, tasks),
        "dali files, no transform": lambda f: dali_loader(f, args.batch, args.workers, ()),
        "dali files, decode + normalize only (ceiling)": lambda f: dali_loader(f, args.batch, args.workers, (), augment=False),
    }
    if args.quick:
        args.images, args.batch, args.batches, args.repeats, args.rounds = 256, 64, 2, 2, 1

    def check(images):
        assert images.shape == (args.batch, 3, SIDE, SIDE) and images.dtype == torch.float32

    load_before = os.getloadavg()[0]  # other processes on a shared machine skew every row
    times = {name: [] for name in loaders}
    cpu = {name: [] for name in loaders}
    starts = {name: [] for name in loaders}
    with tempfile.TemporaryDirectory() as tmp:
        files = list_folder(write_jpeg_folder(Path(tmp) / "tiny", args.images, SIDE), "train")
        need = (args.repeats + 2) * args.batches * args.batch
        reps = -(-need // len(files))  # one long epoch: runs never cross an epoch boundary
        files = FileList(files.paths * reps, list(files.labels) * reps, files.classes)
        # Rounds over all loaders, one loader alive at a time: a load change on a shared
        # machine spreads over every row instead of falling on one.
        for _ in range(args.rounds):
            for name, make in loaders.items():
                t, c, start = time_loader(make(files), batches=args.batches, repeats=args.repeats, check=check)
                times[name] += t
                cpu[name] += c
                starts[name].append(start)
    items = args.batches * args.batch
    rows = [{"loader": name, "start_s": statistics.median(starts[name]), **summarize(times[name], items),
             "cpu_us_per_image": 1e6 * statistics.median(cpu[name]) / items if name.startswith("dali") else None}
            for name in loaders]
    speed = {r["loader"]: r["items_per_s"] for r in rows}
    base = speed["torchvision ImageFolder + DataLoader, transform"]
    for r in rows:
        r["x_vs_torchvision"] = r["items_per_s"] / base
    dali_with, dali_without = speed["dali files, transform"], speed["dali files, no transform"]
    # Extra time per image of the transform, as a fraction of the pipeline's time without
    # it: from wall time, and from CPU time (steadier when other processes share the cores).
    rows[2]["transform_cost"] = dali_without / dali_with - 1
    rows[2]["transform_cost_cpu"] = rows[2]["cpu_us_per_image"] / rows[3]["cpu_us_per_image"] - 1
    info = {**header(), "images": args.images, "side": SIDE, "batch": args.batch, "workers_or_threads": args.workers,
            "load_avg_1min_before": round(load_before, 2)}
    cols = ["loader", "items_per_s", "items_per_s_min", "items_per_s_max", "start_s", "x_vs_torchvision",
            "cpu_us_per_image", "transform_cost", "transform_cost_cpu"]
    print_table("JPEG folder loaders, 64 x 64 (images/s)", info, rows, cols)
    print(f"# targets: dali/torchvision {dali_with / base:.2f}x (>= 2); transform cost "
          f"{rows[2]['transform_cost']:.2f} (wall), {rows[2]['transform_cost_cpu']:.2f} (CPU) of the "
          "pipeline without it (<= 0.5)")
    write_json(args.json, "dali_loader", info, rows)


if __name__ == "__main__":
    main()
