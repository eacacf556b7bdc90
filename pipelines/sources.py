"""Turn a loader ``source`` (docs/method.md section 6) into in-memory arrays.

A source is an ``(images, labels)`` pair (``[N, H, W, 3]`` uint8, ``[N]`` integers), an
``ArrayDataset``, or a folder path (ImageFolder or Tiny-ImageNet layout).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipelines.datasets import ArrayDataset
from pipelines.datasets.arrays import CIFAR_MEAN, CIFAR_STD


def as_array_dataset(source, *, image_size: int | None = None, split: str = "train") -> ArrayDataset:
    """Resolves ``source`` to an ``ArrayDataset`` of side ``image_size`` (native when None)."""
    if isinstance(source, ArrayDataset):
        ds = source
    elif isinstance(source, (str, os.PathLike)):
        from pipelines.datasets.decode import decode_files
        from pipelines.datasets.folders import list_folder

        files = list_folder(Path(source), split=split)
        return decode_files(files, image_size or image_side(files.paths[0]))
    elif isinstance(source, (tuple, list)) and len(source) == 2:
        ds = _from_pair(*source)
    else:
        raise TypeError(
            "source must be an (images, labels) pair, an ArrayDataset or a folder path, "
            f"got {type(source).__name__}"
        )
    if image_size is not None and ds.images.shape[1:3] != (image_size, image_size):
        ds = ds.resized(image_size)
    return ds


def _from_pair(images, labels) -> ArrayDataset:
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"source images must be [N, H, W, 3] uint8, got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"source labels must be [N] integers with N={images.shape[0]}, got {labels.dtype} {labels.shape}")
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    return ArrayDataset(
        images=np.ascontiguousarray(images),
        labels=labels.astype(np.int64),
        classes=tuple(str(i) for i in range(num_classes)),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )


def image_side(path: str) -> int:
    """Width in pixels of the image file ``path`` (read from its header)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size[0]
