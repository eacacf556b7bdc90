"""The FixMatch loader, side by side with the per-sample DataLoader of the reference
ports, and its share of a whole FixMatch step.

    python -m bench.fixmatch_loader [--n 10000] [--workers 2] [--json out.json] [--quick]

One step = 64 labeled images (weak view, + the localizable transform with G-SSL) and 448
unlabeled images, each with a weak and a strong view (RandAugment, 2 ops of FixMatch's
pool, Cutout; + the localizable transform with G-SSL), on CIFAR-sized random arrays.

- per-sample DataLoader: what kekmodel/FixMatch-pytorch and USB build: one DataLoader per
  stream over PIL images (``--workers`` worker processes each), torchvision
  ``RandomHorizontalFlip``, ``RandomCrop(32, 4, padding_mode="reflect")``, torchvision's
  ``RandAugment(num_ops=2)`` on the strong view then a 16x16 grey square
  (``RandomErasing`` with a fixed square), the authors' per-sample quadrant loop with
  G-SSL, ``ToTensor`` and ``Normalize``.
- pipelines: the trainer's two loaders (``gssl_fast.methods.fixmatch.method.fixmatch_views``),
  uint8 batches, every op batched in this process (``--threads`` torch threads).

Steps/s: median over runs of ``--steps`` steps, steady state, in ``--rounds`` rounds with
one loader pair alive at a time. The step share: the loader's time per step against a
training step of the method (WRN-28-2, ``--model``) on one prepared batch.
Target (issue 10): pipelines >= 3x the per-sample DataLoader, with G-SSL.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch

from bench._loaders import endless, time_loaders_in_rounds
from bench.common import (
    bench_parser, check_target, header, load_average, print_table, print_targets, summarize, time_interleaved,
    write_json,
)
from pipelines.datasets.arrays import CIFAR_MEAN, CIFAR_STD

TASKS = ("rotation", "flip", "perm")


class Steps:
    """Zips a labeled and an unlabeled loader, endlessly: one item per FixMatch step,
    ``{"images": labeled images, "labeled": ..., "unlabeled": ...}``."""

    def __init__(self, labeled, unlabeled):
        self.labeled, self.unlabeled = endless(labeled), endless(unlabeled)
        self.keep = (labeled, unlabeled)

    def __iter__(self):
        while True:
            lab, unl = next(self.labeled), next(self.unlabeled)
            yield {"images": lab["images"] if isinstance(lab, dict) else lab[0], "labeled": lab, "unlabeled": unl}


class PerSampleFixMatch(torch.utils.data.Dataset):
    """CIFAR-sized arrays as PIL images through the ports' transforms: the weak view, or
    the weak and the strong one, each quadrant-transformed by the authors' loop."""

    def __init__(self, images, labels, *, strong: bool, tasks):
        from torchvision import transforms as T

        self.images, self.labels, self.strong, self.tasks = images, labels, strong, tuple(tasks)
        side = images.shape[1]
        self.weak = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(side, padding=4, padding_mode="reflect")])
        self.rand_augment = T.RandAugment(num_ops=2)
        area = 0.25  # a square half the side: FixMatch's Cutout
        self.cutout = T.RandomErasing(p=1.0, scale=(area, area), ratio=(1.0, 1.0), value=127 / 255)
        self.to_tensor = T.Compose([T.PILToTensor()])
        self.normalize = T.Normalize(CIFAR_MEAN, CIFAR_STD)

    def __len__(self):
        return len(self.labels)

    def _finish(self, x, quadrant: bool):
        from pipelines.localizable import PARAM_KEYS, draw_localizable, reference_localizable

        if quadrant and self.tasks:
            params = draw_localizable(1, tasks=self.tasks)
            x = reference_localizable(x[None], **{k: params[k] for k in PARAM_KEYS})[0]
        return self.normalize(x.float().div_(255))

    def __getitem__(self, i):
        from PIL import Image

        image = self.weak(Image.fromarray(self.images[i]))
        if not self.strong:
            return self._finish(self.to_tensor(image), True), int(self.labels[i])
        strong = self.cutout(self.to_tensor(self.rand_augment(self.weak(Image.fromarray(self.images[i])))).float())
        return self._finish(self.to_tensor(image), False), self._finish(strong.round().to(torch.uint8), True)


def per_sample_steps(images, labels, labeled, args):
    def loader(ds, batch):
        return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=args.workers,
                                           drop_last=True, persistent_workers=args.workers > 0)

    lab = PerSampleFixMatch(images[labeled], labels[labeled], strong=False, tasks=args.tasks)
    unl = PerSampleFixMatch(images, labels, strong=True, tasks=args.tasks)
    return Steps(loader(lab, args.batch), loader(unl, args.mu * args.batch))


def pipelines_steps(images, labels, labeled, args, backend="torch"):
    from gssl_fast.methods.fixmatch.method import fixmatch_views
    from pipelines import make_loader

    lab_views, unl_views = fixmatch_views(padding=4, hflip=True, mode="reflect", tasks=args.tasks)
    common = dict(backend=backend, normalize=False, drop_last=True, device=args.device)
    return Steps(make_loader((images, labels), batch_size=args.batch, views=lab_views, subset=labeled, **common),
                 make_loader((images, labels), batch_size=args.mu * args.batch, views=unl_views, seed=1, **common))


def step_share(images, labels, labeled, args) -> dict:
    """Seconds per step of the loader and of a training step of the method on one batch."""
    from accelerate import Accelerator

    from gssl_fast.config import load_recipe
    from gssl_fast.methods import MethodContext, build_method

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "cifar10_fixmatch_gssl.toml",
                         [f"model.backbone={args.model}", "method.num_labels=1000"] +
                         ([] if args.model == "wrn28_2" else ["model.kwargs={}"]))
    ctx = MethodContext.of(recipe, np.bincount(labels, minlength=10), CIFAR_MEAN, CIFAR_STD, train_labels=labels)
    method = build_method(recipe.method, ctx)
    opt = torch.optim.SGD(method.model.parameters(), lr=0.01)
    acc = Accelerator(cpu=True)
    steps = iter(pipelines_steps(images, labels, labeled, args))
    batch = next(steps)

    def train():
        out = method.training_step(method.model, {"labeled": batch["labeled"], "unlabeled": batch["unlabeled"]},
                                   accelerator=acc)
        out["loss"].backward()
        opt.step()
        opt.zero_grad()

    times = time_interleaved({"loader step": lambda: next(steps), "training step": train},
                             repeats=args.share_repeats, warmup=1)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--n", type=int, default=10000, help="CIFAR-sized images in memory")
    p.add_argument("--labels", type=int, default=4000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--mu", type=int, default=7)
    p.add_argument("--steps", type=int, default=3, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per stream")
    p.add_argument("--threads", type=int, default=1, help="torch threads of this process (pipelines)")
    p.add_argument("--model", default="wrn28_2")
    p.add_argument("--share-repeats", type=int, default=3)
    p.add_argument("--no-gssl", dest="tasks", action="store_const", const=(), default=TASKS)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.labels, args.batch, args.mu, args.steps, args.repeats, args.rounds = 1024, 200, 16, 2, 2, 1, 1
        args.model, args.share_repeats = "resnet8_cifar", 1
    load_before = load_average()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.n)
    from pipelines.sampling import balanced_subset

    labeled = balanced_subset(labels, args.labels, 10, seed=0)
    makers = {f"per-sample DataLoader ({args.workers} workers per stream)":
              lambda: per_sample_steps(images, labels, labeled, args),
              "pipelines.torch (uint8, batched)": lambda: pipelines_steps(images, labels, labeled, args)}
    res = time_loaders_in_rounds(makers, rounds=args.rounds, batches=args.steps, repeats=args.repeats,
                                 device=args.device)
    per_step = args.batch * (1 + 2 * args.mu)  # images delivered per step
    rows = [{"loader": name, "gssl": bool(args.tasks), **summarize(r["wall"], args.steps),
             "images_per_s": per_step * args.steps / statistics.median(r["wall"]),
             "start_s": statistics.median(r["start"])} for name, r in res.items()]
    for r in rows:
        r["x_vs_per_sample"] = r["items_per_s"] / rows[0]["items_per_s"]
    share = step_share(images, labels, labeled, args)
    loader_s, train_s = share["loader step"], share["training step"]
    info = {**header(), "load_avg_1min_before": load_before, "images": args.n, "labels": args.labels,
            "batch": args.batch, "mu": args.mu, "workers": args.workers, "threads": args.threads,
            "model": args.model, "loader_s_per_step": loader_s, "train_s_per_step": train_s,
            "loader_share_of_step": loader_s / (loader_s + train_s), "load_avg_1min_after": load_average()}
    print_table("fixmatch loader (steps/s: 1 step = labeled weak + unlabeled weak and strong)", info, rows,
                ["loader", "gssl", "items_per_s", "items_per_s_min", "items_per_s_max", "images_per_s",
                 "x_vs_per_sample", "start_s"])
    print(f"# one step on {args.model}: loader {loader_s * 1e3:.1f} ms, training step {train_s * 1e3:.1f} ms: "
          f"the loader is {100 * info['loader_share_of_step']:.1f}% of a step run back to back")
    targets = [check_target("pipelines / per-sample DataLoader", rows[1]["x_vs_per_sample"], 3.0)]
    print_targets(targets)
    write_json(args.json, "fixmatch_loader", {**info, "targets": targets}, rows)


if __name__ == "__main__":
    main()
