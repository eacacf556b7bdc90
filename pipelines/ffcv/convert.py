"""Writing datasets to FFCV ``.beton`` files, and reading back what was written.

A ``.beton`` holds three fields per sample: ``image`` (``RGBImageField``, raw uint8
pixels or JPEG), ``label`` and ``index`` (``IntField``: the sample's position in the
source dataset, so that batches carry ``indices``). Beside it, ``PATH.json`` records
what the file cannot: class names, the dataset's default mean and std, the image side.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pipelines.datasets import ArrayDataset
from pipelines.datasets.arrays import CIFAR_MEAN, CIFAR_STD
from pipelines.errors import UserError, unknown_name
from pipelines.sources import as_array_dataset
from pipelines.system import usable_cores

FIELDS = ("image", "label", "index")
# convert(mode=...) -> RGBImageField write_mode
MODES = {"raw": "raw", "jpg": "jpg"}
INFO_FORMAT = "gssl_fast-beton-1"
# Samples per task handed to a writer process.
CHUNK = 256


class _Samples:
    """The indexable FFCV's writer reads: sample ``i`` -> (image HWC uint8, label, index)."""

    def __init__(self, dataset: ArrayDataset):
        self.images, self.labels = dataset.images, dataset.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i]), int(i)


def fingerprint(dataset: ArrayDataset) -> str:
    """A short hash of what a ``.beton`` is written from: the image count and size, the
    labels, and every 97th image's pixels (cheap for 100,000 images, different for any
    other dataset, split, long tail or resize)."""
    import hashlib

    h = hashlib.blake2b(digest_size=12)
    h.update(repr((len(dataset), tuple(dataset.image_size))).encode())
    h.update(np.ascontiguousarray(np.asarray(dataset.labels, dtype=np.int64)).tobytes())
    h.update(np.ascontiguousarray(dataset.images[::97]).tobytes())
    return h.hexdigest()


def check_matches(path: str | os.PathLike, dataset: ArrayDataset, what: str) -> None:
    """Refuses a ``.beton`` that was not written from ``dataset`` (``what`` names it in
    the message), by the fingerprint :func:`convert` records, else by its image count."""
    info = read_info(path)
    if "fingerprint" in info:
        same = info["fingerprint"] == fingerprint(dataset)
    else:
        from ffcv.reader import Reader

        same = int(Reader(str(path)).num_samples) == len(dataset)
    if not same:
        raise UserError(f"{path} was not written from {what} ({len(dataset)} images "
                        f"{'x'.join(map(str, dataset.image_size))}); write it again from this recipe: "
                        f"python -m gssl_fast.convert RECIPE.toml --split train --out {path}")


def info_path(path: str | os.PathLike) -> Path:
    """The JSON written beside a ``.beton``: ``train.beton`` -> ``train.beton.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def convert(
    source,
    path: str | os.PathLike,
    *,
    mode: str = "raw",
    jpeg_quality: int = 90,
    image_size: int | None = None,
    split: str = "train",
    num_workers: int | None = None,
) -> Path:
    """Writes ``source`` to the ``.beton`` file ``path`` (and ``path.json``); returns ``path``.

    source: ``(images [N, H, W, 3] uint8, labels [N] int)``, an ``ArrayDataset`` or a
    folder (ImageFolder / Tiny-ImageNet; ``split`` picks train or val there), resized to
    ``image_size`` when given.
    mode: ``"raw"`` stores the pixels (read back exactly), ``"jpg"`` JPEG at
    ``jpeg_quality`` (smaller, lossy, decoded by libjpeg-turbo).
    num_workers: writer processes; None = the cores available, at most 8.
    """
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    if mode not in MODES:
        raise unknown_name("FFCV image mode", mode, MODES)
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    path = Path(path)
    if path.suffix != ".beton":
        raise UserError(f"FFCV output {path} must end in .beton")
    dataset = as_array_dataset(source, image_size=image_size, split=split)
    if len(dataset) == 0:
        raise UserError(f"nothing to write to {path}: the dataset has no images")
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {
        "image": RGBImageField(write_mode=MODES[mode], jpeg_quality=jpeg_quality),
        "label": IntField(),
        "index": IntField(),
    }
    workers = num_workers or min(usable_cores(), 8)
    # One writer process per chunk at most: processes cost more than a small dataset.
    workers = max(1, min(workers, -(-len(dataset) // CHUNK)))
    writer = DatasetWriter(str(path), fields, num_workers=workers)
    writer.from_indexed_dataset(_Samples(dataset), chunksize=CHUNK)
    info = {
        "format": INFO_FORMAT,
        "num_samples": len(dataset),
        "image_size": list(dataset.image_size),
        "mode": mode,
        "classes": list(dataset.classes),
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "fingerprint": fingerprint(dataset),
    }
    info_path(path).write_text(json.dumps(info, indent=1) + "\n")
    return path


def read_info(path: str | os.PathLike) -> dict:
    """What :func:`convert` recorded beside ``path``; for a ``.beton`` written elsewhere,
    the CIFAR mean and std and no class names."""
    side = info_path(path)
    if not side.exists():
        return {"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD), "classes": None}
    try:
        info = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{side}: not the JSON pipelines.ffcv.convert writes ({e}); convert the dataset again") from None
    return info


def check_beton(path: str | os.PathLike):
    """Opens ``path`` with FFCV's reader; returns it after checking the fields.

    Raises UserError when the file is missing, unreadable or lacks a field of :data:`FIELDS`.
    """
    from ffcv.reader import Reader

    path = Path(path)
    hint = f"write it with: python -m gssl_fast.convert RECIPE.toml --split train --out {path}"
    if not path.is_file():
        raise UserError(f"FFCV file not found: {path}; {hint}")
    try:
        reader = Reader(str(path))
    except (AssertionError, ValueError, IndexError, OSError) as e:
        raise UserError(f"{path} is not a readable FFCV .beton ({e}); {hint}") from None
    missing = [f for f in FIELDS if f not in reader.handlers]
    if missing:
        raise UserError(f"{path} has fields {sorted(reader.handlers)}, lacks {missing}; {hint}")
    meta = reader.metadata[f"f{list(reader.handlers).index('image')}"]
    if len(meta) and (np.any(meta["width"] != meta["width"][0]) or np.any(meta["height"] != meta["width"][0])):
        raise UserError(f"{path} holds images of several sizes or non-square ones; {hint} (it resizes them)")
    return reader

