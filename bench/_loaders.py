"""Loader pieces shared by the loader benchmarks: the papers'-style per-sample data path,
a generated JPEG folder, a synthetic loader, and steady-state loader timing.

    PerSampleTransform   torchvision crop + flip, the authors' per-sample quadrant loop, Normalize
    PerSampleArrays      in-memory [N, H, W, 3] uint8 through it, one sample at a time
    PerSampleFiles       image files (PIL) through it, as torchvision's ImageFolder does
    per_sample_loader    a torch DataLoader with worker processes over either
    ToDevice             its batches moved to the training device
    write_jpeg_folder    a Tiny-ImageNet-shaped folder of JPEGs (the built-in shapes)
    SameBatch            the synthetic ceiling: one batch delivered again and again
    endless              epoch after epoch of a loader
    time_loader          wall seconds per run of batches, steady state
    time_loaders_in_rounds   several loaders, in rounds, one alive at a time
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from bench.common import time_runs
from pipelines.localizable import PARAM_KEYS, draw_localizable, reference_localizable

PADDING = 4  # the random crop's zero padding, as in the papers' code


class PerSampleTransform:
    """The papers' data path for one image: ``RandomCrop(side, padding=4)`` and
    ``RandomHorizontalFlip`` (on a PIL image or a ``[3, H, W]`` uint8 tensor), the
    localizable transform by the authors' per-sample loop, then ``Normalize``.

    Returns ``(image [3, H, W] float32, targets {"target_<task>": int64 scalar})``.
    """

    def __init__(self, side: int, mean: Sequence[float], std: Sequence[float], tasks: Sequence[str]):
        from torchvision import transforms as T

        self.tasks = tuple(tasks)
        self.augment = T.Compose([T.RandomCrop(side, padding=PADDING), T.RandomHorizontalFlip()])
        self.to_tensor = T.PILToTensor()
        self.normalize = T.Normalize(mean, std)

    def __call__(self, image):
        x = self.augment(image)
        if not isinstance(x, torch.Tensor):
            x = self.to_tensor(x)  # [3, H, W] uint8
        targets = {}
        if self.tasks:
            params = draw_localizable(1, tasks=self.tasks)  # the worker's torch RNG
            x = reference_localizable(x[None], **{k: params[k] for k in PARAM_KEYS})[0]
            targets = {k: v[0] for k, v in params.items() if k.startswith("target_")}
        return self.normalize(x.float().div_(255)), targets


class PerSampleArrays(torch.utils.data.Dataset):
    """In-memory ``[N, H, W, 3]`` uint8 images, one sample per ``__getitem__``.

    pil: hand each image to the transform as ``PIL.Image.fromarray`` (what torchvision's
    ``CIFAR10`` dataset does); otherwise as a ``[3, H, W]`` uint8 tensor view.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: PerSampleTransform, *, pil: bool):
        self.pil, self.transform = pil, transform
        self.images = images if pil else torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        if self.pil:
            from PIL import Image

            image = Image.fromarray(self.images[i])
        else:
            image = self.images[i]
        x, targets = self.transform(image)
        return x, self.labels[i], targets


class PerSampleFiles(torch.utils.data.Dataset):
    """Image files of a ``FileList``: open, convert to RGB, transform (ImageFolder's job)."""

    def __init__(self, files, transform: PerSampleTransform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files.paths[i]) as im:
            x, targets = self.transform(im.convert("RGB"))
        return x, int(self.files.labels[i]), targets


def per_sample_loader(dataset, *, batch_size: int, workers: int, drop_last: bool = True, prefetch: int = 2):
    """The papers' ``DataLoader``: shuffled, ``workers`` worker processes (kept alive
    across epochs), the default collate. Yields ``(images, labels, targets)``."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=drop_last,
        persistent_workers=workers > 0, prefetch_factor=prefetch if workers else None,
    )


def write_jpeg_folder(root: Path, n: int, side: int = 64) -> Path:
    """A Tiny-ImageNet-shaped folder (``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
    ``val/``) of ``n`` generated ``side x side`` JPEGs of the built-in shapes dataset."""
    from pipelines.datasets.shapes import make_shapes
    from pipelines.datasets.testing import write_tinyimagenet

    train = make_shapes(n, image_size=side, seed=0)
    val = make_shapes(10, image_size=side, seed=0, split="val")
    return write_tinyimagenet(root, train.images, train.labels, val.images, val.labels, ext="JPEG")


class SameBatch:
    """The synthetic ceiling: ``batches`` deliveries per epoch of one prepared batch
    (a dict, as the project's loaders yield), no work at all."""

    def __init__(self, batch: dict, batches: int):
        self.batch, self.batches = batch, batches

    def __len__(self) -> int:
        return self.batches

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self) -> Iterator[dict]:
        for _ in range(self.batches):
            yield self.batch


def endless(loader) -> Iterator:
    """The batches of epoch after epoch of ``loader``; epoch starts (a DALI pipeline
    build, an FFCV epoch set-up) are paid where they fall, as in training."""
    while True:
        yield from loader


def batch_images(batch) -> torch.Tensor:
    """The images of a batch: a dict's ``images`` or a tuple's first element."""
    return batch["images"] if isinstance(batch, dict) else batch[0]


def time_loader(loader, *, batches: int, repeats: int, warmup: int = 1,
                device: torch.device | str = "cpu", check: Callable[[torch.Tensor], None] | None = None):
    """``(wall seconds per run of batches, CPU seconds of this process per run, seconds
    to the first batch)`` over ``repeats`` runs after ``warmup`` untimed runs.

    Each run takes the next ``batches`` batches of :func:`endless` ``(loader)``. CPU time
    counts this process's threads (DALI's, FFCV's), not DataLoader worker processes.
    ``check`` is called on the last images of each run (shape, dtype).
    """
    t0 = time.perf_counter()
    it = endless(loader)
    next(it)
    start_s = time.perf_counter() - t0
    cpu: list[float] = []

    def run():
        c0 = time.process_time()
        for _ in range(batches):
            images = batch_images(next(it))
        cpu.append(time.process_time() - c0)
        if check is not None:
            check(images)

    wall = time_runs(run, repeats=repeats, warmup=warmup, device=device)
    return wall, cpu[warmup:], start_s


def time_loaders_in_rounds(makers: dict[str, Callable[[], object]], *, rounds: int, **kwargs):
    """:func:`time_loader` of every loader of ``makers`` (name -> factory), in ``rounds``
    rounds over all of them with one loader alive at a time (worker processes and
    threads of the others would compete for the cores). Returns name ->
    ``{"wall": [...], "cpu": [...], "start": [...]}``."""
    out = {name: {"wall": [], "cpu": [], "start": []} for name in makers}
    for _ in range(rounds):
        for name, make in makers.items():
            loader = make()
            wall, cpu, start = time_loader(loader, **kwargs)
            out[name]["wall"] += wall
            out[name]["cpu"] += cpu
            out[name]["start"].append(start)
            del loader
    return out


class ToDevice:
    """A ``DataLoader``'s ``(images, labels, targets)`` batches moved to ``device`` (from
    pinned memory on CUDA), as a training loop does; an iterable with ``len()``."""

    def __init__(self, loader, device: torch.device | str):
        self.loader, self.device = loader, torch.device(device)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self.device.type == "cpu":
            yield from self.loader
            return
        for images, labels, targets in self.loader:
            move = {"device": self.device, "non_blocking": True}
            yield images.to(**move), labels.to(**move), {k: v.to(**move) for k, v in targets.items()}
