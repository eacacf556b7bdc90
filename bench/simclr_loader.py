"""SimCLR's two-view loader, side by side with the per-sample torchvision DataLoader that
contrastive-learning code builds (solo-learn, lightly, the SimCLR PyTorch ports).

    python -m bench.simclr_loader [--n 10000] [--batch 256] [--workers 2] [--json out.json] [--quick]

Both deliver two views of every image of a batch on CIFAR-sized random arrays: random
resized crop, flip, colour jitter (strength 0.5, p 0.8), grayscale (p 0.2).

- per-sample DataLoader: PIL images through torchvision's ``RandomResizedCrop``,
  ``RandomHorizontalFlip``, ``RandomApply([ColorJitter])``, ``RandomGrayscale``,
  ``PILToTensor``, twice per image, ``--workers`` worker processes, float32 normalized.
- pipelines: ``pipelines.make_loader`` with two views of ``pipelines.simclr_ops.simclr_view``,
  uint8 batches, every op batched in this process (``--threads`` torch threads).

Images/s counts images (each with its two views); median over runs, steady state, in
rounds with one loader alive at a time. Target (issue 11): pipelines >= 3x the DataLoader.
"""

from __future__ import annotations

import statistics

import numpy as np
import torch

from bench._loaders import endless, time_loaders_in_rounds
from bench.common import (
    bench_parser, check_target, header, load_average, print_table, print_targets, summarize, write_json,
)
from pipelines.datasets.arrays import CIFAR_MEAN, CIFAR_STD


class TwoViews(torch.utils.data.Dataset):
    """CIFAR-sized arrays as PIL images, two torchvision-augmented views each."""

    def __init__(self, images, labels, strength: float):
        from torchvision import transforms as T

        s = strength
        self.images, self.labels = images, labels
        self.transform = T.Compose([
            T.RandomResizedCrop(images.shape[1]), T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8), T.RandomGrayscale(0.2),
            T.PILToTensor(), T.ConvertImageDtype(torch.float32), T.Normalize(CIFAR_MEAN, CIFAR_STD)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        image = Image.fromarray(self.images[i])
        return self.transform(image), self.transform(image), int(self.labels[i])


class Renamed:
    """A loader of two-view dicts seen through ``images`` = the first view (bench._loaders
    reads that key); endless."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        for batch in endless(self.loader):
            yield {"images": batch["view1"], **batch}


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=4, help="batches per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--strength", type=float, default=0.5)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.batch, args.batches, args.repeats, args.rounds = 512, 64, 2, 1, 1
    load_before = load_average()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.n)
    from pipelines import make_loader
    from pipelines.simclr_ops import simclr_view

    view = simclr_view(strength=args.strength, input_size=32)

    def ours():
        return Renamed(make_loader((images, labels), batch_size=args.batch, views={"view1": view, "view2": view},
                                   normalize=False, drop_last=True, device=args.device))

    def theirs():
        return torch.utils.data.DataLoader(TwoViews(images, labels, args.strength), batch_size=args.batch,
                                           shuffle=True, num_workers=args.workers, drop_last=True,
                                           persistent_workers=args.workers > 0)

    makers = {f"per-sample torchvision DataLoader ({args.workers} workers)": theirs,
              "pipelines.torch, two views (uint8, batched)": ours}
    res = time_loaders_in_rounds(makers, rounds=args.rounds, batches=args.batches, repeats=args.repeats,
                                 device=args.device)
    rows = [{"loader": name, "batch": args.batch, **summarize(r["wall"], args.batches * args.batch),
             "start_s": statistics.median(r["start"])} for name, r in res.items()]
    for r in rows:
        r["x_vs_per_sample"] = r["items_per_s"] / rows[0]["items_per_s"]
    info = {**header(), "load_avg_1min_before": load_before, "images": args.n, "workers": args.workers,
            "threads": args.threads, "load_avg_1min_after": load_average()}
    print_table("simclr two-view loader (images/s, two views each)", info, rows,
                ["loader", "batch", "items_per_s", "items_per_s_min", "items_per_s_max", "x_vs_per_sample", "start_s"])
    targets = [check_target("pipelines / per-sample DataLoader", rows[1]["x_vs_per_sample"], 3.0)]
    print_targets(targets)
    write_json(args.json, "simclr_loader", {**info, "targets": targets}, rows)


if __name__ == "__main__":
    main()
