"""Datasets as in-memory uint8 arrays (docs/method.md section 5).

Every dataset the project reads ends up as an :class:`ArrayDataset` (images
``[N, H, W, 3]`` uint8, labels ``[N]`` int64); the loaders (torch, DALI, FFCV) start
from one. :data:`DATASETS` maps ``data.name`` to its reader, and :func:`load_dataset`
adds what every dataset shares: the long-tailed train split and the resize to
``data.image_size``.

    shapes.py    the built-in procedural dataset (no download)
    cifar.py     CIFAR-10/100 python pickles, through a plain-data unpickler
    folders.py   ImageFolder trees and Tiny-ImageNet-200: the files and their labels
    decode.py    image files -> arrays with PIL; unreadable files refused or skipped
    cache.py     decoded folder datasets kept on disk for the next run
    longtail.py  LDAM-DRW long-tailed subsampling
    fetch.py     the official archives: download (resumable), md5 check, safe unpack
    shards.py    WebDataset shards: any dataset written as tar files, and listed back
    testing.py   writers of small datasets in the real file formats, for tests
"""

from __future__ import annotations

from typing import Callable

from pipelines.datasets.arrays import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ArrayDataset,
    check_split,
    resize_images,
)
from pipelines.datasets.cifar import cifar10, cifar100
from pipelines.datasets.decode import decode_files, imagefolder, tinyimagenet
from pipelines.datasets.folders import FileList, imagefolder_files, list_folder, tinyimagenet_files
from pipelines.datasets.longtail import longtail_counts, longtail_indices
from pipelines.datasets.shards import ShardSet, open_shards
from pipelines.datasets.shapes import make_shapes, shapes
from pipelines.errors import UserError, unknown_name

# data.name -> fn(cfg: DataConfig, split: "train" | "val") -> ArrayDataset
DATASETS: dict[str, Callable] = {
    "shapes": shapes,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "tinyimagenet": tinyimagenet,
    "imagefolder": imagefolder,
}


# data.name -> fn(cfg, split) -> FileList: the datasets that are folders of image files,
# which a loader may stream (``pipelines.stream``) instead of decoding them whole.
FOLDER_DATASETS: dict[str, Callable] = {
    "tinyimagenet": tinyimagenet_files,
    "imagefolder": imagefolder_files,
}


# data.name -> fn(cfg, split) -> ShardSet: datasets written as WebDataset shards
# (``pipelines.datasets.shards``), read as a stream (``pipelines.stream.ShardSource``);
# their labels and classes come from the shards' listing.
SHARD_DATASETS: dict[str, Callable] = {
    "webdataset": open_shards,
}


# The share of the training images data.calibration_fraction holds out of training, read
# as a split of its own (evaluate --calibration fits its temperature on it).
CALIBRATION = "calibration"


def list_files(cfg, split: str) -> FileList:
    """The files of ``split`` of the folder dataset ``cfg.name``, the train split
    subsampled to a long tail and less its calibration share as :func:`load_dataset`
    does; nothing decoded."""
    base = _base_split(split)
    if cfg.name not in FOLDER_DATASETS:
        raise unknown_name("dataset of image files (data.name, with data.stream)", cfg.name, FOLDER_DATASETS)
    files = FOLDER_DATASETS[cfg.name](cfg, base)
    keep = _training_positions(files.labels, len(files.classes), cfg, split) if base == "train" else None
    if keep is not None:
        files = FileList(tuple(files.paths[i] for i in keep), files.labels[keep], files.classes, files.skipped)
    return files


def _base_split(split: str) -> str:
    """The split of the dataset that ``split`` is read from (the calibration share: train)."""
    return "train" if split == CALIBRATION else check_split(split)


def _training_positions(labels, num_classes: int, cfg, split: str):
    """``[M]`` positions of the train split's images that ``split`` ("train" or
    "calibration") holds: the long tail of ``data.longtail``, less (for "calibration":
    only) a seeded ``data.calibration_fraction`` of each of its classes. None: all."""
    import numpy as np

    keep = None
    if cfg.longtail != "none":
        try:
            keep = np.asarray(longtail_indices(labels, cfg.longtail, cfg.imbalance_ratio, num_classes=num_classes))
        except ValueError as e:  # a bad data.longtail / data.imbalance_ratio
            raise UserError(str(e)) from None
    fraction = getattr(cfg, "calibration_fraction", 0.0)
    if not fraction:
        if split == CALIBRATION:
            raise UserError("the calibration split is the share of the training images that "
                            "data.calibration_fraction holds out of training, and it is 0 in this recipe")
        return keep
    from pipelines.sampling import derive_seed, held_out_positions

    pool = np.arange(len(labels)) if keep is None else keep
    held = held_out_positions(np.asarray(labels)[pool], fraction, derive_seed(cfg.seed, CALIBRATION))
    return pool[held] if split == CALIBRATION else np.delete(pool, held)


def load_dataset(cfg, split: str) -> ArrayDataset:
    """The ``split`` ("train", "val" or "calibration") of the dataset ``cfg.name`` (a DataConfig).

    The train split is subsampled to a long tail when ``cfg.longtail != "none"``
    (``longtail_indices``: LDAM-DRW's per-class counts and selection), then a seeded
    ``cfg.calibration_fraction`` of each class is held out of it: the "calibration"
    split. Images whose size differs from ``cfg.image_size`` are resized to
    ``image_size x image_size`` with PIL's bilinear filter, antialiased when shrinking
    (``resize_images``).
    """
    base = _base_split(split)
    if cfg.name in SHARD_DATASETS:
        raise UserError(f"data.name = {cfg.name!r} is read from its shards as a stream (train.loader = \"torch\"); "
                        "it has no in-memory form")
    if cfg.name not in DATASETS:
        raise unknown_name("dataset (data.name)", cfg.name, DATASETS)
    dataset = DATASETS[cfg.name](cfg, base)
    keep = _training_positions(dataset.labels, dataset.num_classes, cfg, split) if base == "train" else None
    if keep is not None:
        dataset = dataset.subset(keep)
    return dataset.resized(cfg.image_size)


__all__ = [
    "ArrayDataset",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "FOLDER_DATASETS",
    "FileList",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHARD_DATASETS",
    "ShardSet",
    "decode_files",
    "list_files",
    "list_folder",
    "load_dataset",
    "longtail_counts",
    "longtail_indices",
    "make_shapes",
    "resize_images",
]
