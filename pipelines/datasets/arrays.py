"""The in-memory form of every dataset: uint8 images and int64 labels.

Every reader (shapes, CIFAR, folders) ends in an :class:`ArrayDataset`; the loaders
(torch, DALI, FFCV) start from one. Kept apart from ``__init__`` so that the readers
can import it without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# Default normalizations, in [0, 1] units (docs/method.md section 3: the authors' values).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A labelled image dataset held in memory.

    images: ``[N, H, W, 3]`` uint8, C-contiguous (made so on construction).
    labels: ``[N]`` int64, each in ``0 .. len(classes) - 1``.
    classes: class names; label ``k`` is ``classes[k]``.
    mean, std: the dataset's default per-channel normalization, in [0, 1] units.
    skipped: ``(path, what is wrong)`` of the source files left out as unreadable
        (``pipelines.datasets.decode``, ``on_corrupt="skip"``).

    ``eq=False``: two datasets compare by identity (element-wise array equality has
    no single truth value).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    skipped: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        images = np.ascontiguousarray(self.images)
        labels = np.asarray(self.labels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(
                f"images must be [N, H, W, 3] uint8, got {images.dtype} {tuple(images.shape)}"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must be [N] with N = {images.shape[0]} images, got shape {tuple(labels.shape)}"
            )
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        labels = labels.astype(np.int64, copy=False)
        classes = tuple(str(c) for c in self.classes)
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(
                f"labels must lie in 0..{len(classes) - 1} ({len(classes)} classes), "
                f"got {labels.min()}..{labels.max()}"
            )
        mean, std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")
        for name, value in (("images", images), ("labels", labels), ("classes", classes),
                            ("mean", mean), ("std", std)):
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def class_counts(self) -> np.ndarray:
        """``[K]`` int64: number of images of each class (zeros for absent classes)."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def subset(self, indices) -> ArrayDataset:
        """The samples at ``indices`` (int array or boolean mask), copied, same classes."""
        indices = np.asarray(indices)
        if indices.dtype != bool:
            indices = indices.astype(np.int64, copy=False)
        return ArrayDataset(self.images[indices], self.labels[indices], self.classes, self.mean, self.std,
                            self.skipped)

    def resized(self, image_size: int) -> ArrayDataset:
        """This dataset with every image resized to ``image_size x image_size``
        (see :func:`resize_images`); ``self`` when the size already matches."""
        if self.image_size == (image_size, image_size):
            return self
        return ArrayDataset(resize_images(self.images, image_size), self.labels, self.classes, self.mean, self.std,
                            self.skipped)


def resize_image(image: Image.Image, image_size: int) -> Image.Image:
    """Resizes a PIL image to ``image_size x image_size`` with PIL's bilinear filter.

    PIL widens the filter support by the scale factor when it shrinks, so downscaling is
    antialiased. Non-square images are squashed to the square (no crop), like a
    ``Resize((s, s))``.
    """
    if image.size == (image_size, image_size):
        return image
    return image.resize((image_size, image_size), Image.BILINEAR)


def resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 -> ``[N, image_size, image_size, 3]`` uint8 via :func:`resize_image`.

    One PIL call per image: the same filter as the file decoder, so a folder of images
    and the same images in an array end up with the same pixels.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    out = np.empty((images.shape[0], image_size, image_size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(resize_image(Image.fromarray(image), image_size))
    return out


SPLITS = ("train", "val")


def check_split(split: str) -> str:
    """Returns ``split`` if it is ``"train"`` or ``"val"``, else raises ValueError."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split
