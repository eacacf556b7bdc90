"""Folder datasets read from their files every epoch, each image cropped as it is decoded.

    Decode(kind, scale, ratio, fraction,   how one file becomes an ``[S, S, 3]`` uint8 image
           interpolation)
    StreamSource(files, decode, ...)       what a stream loader reads: the files, never the pixels
    ShardSource(shards, decode, ...)       the same for WebDataset shards (pipelines.datasets.shards)
    read_image(path, decode, size, ...)    one file (or its bytes) -> ``[S, S, 3]`` uint8: the
                                           reference every backend's stream is tested against

Kinds of ``Decode``:
    "resize"          the whole image squashed to ``S x S`` (PIL bilinear, antialiased), the
                      pixels of the in-memory path (``pipelines.datasets.decode.read_rgb``);
    "random_resized"  a window of area fraction in ``scale`` and aspect ratio in ``ratio``
                      (torchvision's ``RandomResizedCrop`` rule, ``pipelines.resized_crop``),
                      drawn from (seed, epoch, index), resized to ``S x S``;
    "centre"          the centred square of side ``fraction * min(H, W)`` resized to
                      ``S x S``: timm's evaluation crop (resize to ``S / crop_pct``, then
                      centre-crop ``S``).
``interpolation``: PIL's filter that resamples the window to ``S x S``, "bilinear" (the
in-memory path's) or "bicubic" (torchvision's ``RandomResizedCrop(S, interpolation=3)`` of
OpenMixup's Tiny-ImageNet benchmarks); antialiased either way, as PIL widens the filter
when it shrinks.
A window of a JPEG is decoded at the smallest of libjpeg's scales (1/8, 1/4, 1/2, 1) that
still gives the window at least ``S`` pixels a side (PIL ``draft``): a large photo is not
decoded at full size when the crop is small. Draws depend on (seed, epoch, index) alone,
so a resumed run and any worker process draw the same windows.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipelines.datasets.decode import PIL_ERRORS, problem, to_rgb
from pipelines.datasets.arrays import resize_image
from pipelines.datasets.folders import FileList
from pipelines.datasets import SHARD_DATASETS
from pipelines.datasets.shards import ShardSet
from pipelines.errors import unknown_name

INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}  # PIL's filters by name
KINDS = {
    "resize": "the whole image squashed to the output square",
    "random_resized": "a random window (area fraction in scale, aspect ratio in ratio) resized to the square",
    "centre": "the centred square of side fraction * the shorter side, resized to the square",
}


@dataclass(frozen=True)
class Decode:
    """How a stream decodes one file (module docstring). ``scale``, ``ratio``: the
    random-resized window's area fraction and aspect-ratio ranges; ``fraction``: the
    centre crop's share of the shorter side; ``interpolation``: the filter of
    ``INTERPOLATIONS`` that resamples the window."""

    kind: str = "resize"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    fraction: float = 0.875
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise unknown_name("decode kind", self.kind, KINDS)
        if self.interpolation not in INTERPOLATIONS:
            raise unknown_name("interpolation", self.interpolation, INTERPOLATIONS)
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))
        if not 0 < self.fraction <= 1:
            raise ValueError(f"the centre crop's fraction must be in (0, 1], got {self.fraction}")
        for name, pair in (("scale", self.scale), ("ratio", self.ratio)):
            if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
                raise ValueError(f"the random-resized crop's {name} must be [min, max], 0 < min <= max, got {pair}")

    @property
    def random(self) -> bool:
        return self.kind == "random_resized"

    def window(self, height: int, width: int, seed: int, epoch: int, index: int) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` in pixels of an image of ``height x width``: the part of
        it that becomes the output (the whole image for "resize")."""
        return tuple(self.windows([height], [width], seed, epoch, [index])[0].tolist())

    def windows(self, heights, widths, seed: int, epoch: int, indices) -> np.ndarray:
        """:meth:`window` of a batch at once: ``[B, 4]`` int64 ``(top, left, h, w)`` of
        images of ``heights x widths`` (``[B]`` ints) at dataset positions ``indices``."""
        h, w = np.asarray(heights, dtype=np.int64), np.asarray(widths, dtype=np.int64)
        if self.kind == "resize":
            return np.stack([np.zeros_like(h), np.zeros_like(h), h, w], 1)
        if self.kind == "centre":
            side = np.maximum(np.rint(self.fraction * np.minimum(h, w)), 1).astype(np.int64)
            return np.stack([(h - side) // 2, (w - side) // 2, side, side], 1)
        import torch

        from pipelines.resized_crop import RandomResizedCrop, boxes_of
        from pipelines.sampling import generator

        op = RandomResizedCrop(self.scale, self.ratio)
        # Each image's numbers from its own stream: a window is the same in any batch, worker or run.
        drawn = [op.attempts(1, generator(seed, "decode", epoch, int(i))) for i in indices]
        area, aspect, top, left = (torch.cat(parts, dim=-1) for parts in zip(*drawn))
        box = boxes_of(area, aspect, top, left, torch.from_numpy(h), torch.from_numpy(w), self.ratio)
        return torch.stack([box[k] for k in op.keys], 1).numpy()


@dataclass(frozen=True, eq=False)
class StreamSource:
    """What a stream loader reads: ``files`` (paths, labels, classes), decoded each epoch
    as ``decode`` says; ``on_corrupt``: an unreadable file stops the run ("error", naming
    it) or is left out of its batch ("skip", named once in the log)."""

    files: FileList
    decode: Decode = field(default_factory=Decode)
    on_corrupt: str = "error"

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labels(self) -> np.ndarray:
        return self.files.labels

    @property
    def classes(self) -> tuple[str, ...]:
        return self.files.classes


@dataclass(frozen=True, eq=False)
class ShardSource:
    """What a shard loader reads: ``shards`` (``pipelines.datasets.shards.ShardSet``),
    each sample decoded as ``decode`` says with its key as the index of its window;
    ``on_corrupt`` as for :class:`StreamSource` (a shard that ends early too);
    ``shuffle_buffer``: samples each process holds to shuffle its stream of shards
    (0: the shards' order alone)."""

    shards: ShardSet
    decode: Decode = field(default_factory=Decode)
    on_corrupt: str = "error"
    shuffle_buffer: int = 1000

    def __len__(self) -> int:
        return len(self.shards)

    @property
    def labels(self) -> np.ndarray:
        """``[N]`` int64 labels of the samples, sorted by key (as a loader's ``indices`` sort)."""
        return self.shards.labels

    @property
    def classes(self) -> tuple[str, ...]:
        return self.shards.classes


def draft_scale(image_size: tuple[int, int], window: tuple[int, int, int, int], size: int) -> tuple[int, int]:
    """The ``(width, height)`` to ask PIL's ``draft`` for: the image scaled so that the
    window keeps at least ``size`` pixels a side (libjpeg then picks the smallest of its
    scales at or above it)."""
    width, height = image_size
    _, _, h, w = window
    factor = max(size / max(w, 1), size / max(h, 1))
    return math.ceil(width * min(factor, 1.0)), math.ceil(height * min(factor, 1.0))


def _resized(image: Image.Image, size: int, interpolation: str) -> Image.Image:
    if interpolation == "bilinear":
        return resize_image(image, size)  # the in-memory path's resize
    return image if image.size == (size, size) else image.resize((size, size), INTERPOLATIONS[interpolation])


def decode_window(image: Image.Image, window: tuple[int, int, int, int], size: int, *, draft: bool = True,
                  interpolation: str = "bilinear") -> np.ndarray:
    """An opened PIL image's ``window`` (``(top, left, h, w)`` of its full size) as
    ``[size, size, 3]`` uint8 RGB (PIL ``interpolation``, antialiased); a JPEG decoded at
    reduced scale when ``draft`` and the window allows."""
    full = image.size
    top, left, h, w = window
    if window == (0, 0, full[1], full[0]):  # the whole image: the in-memory path's pixels (bilinear)
        return np.asarray(_resized(to_rgb(image), size, interpolation))
    if draft and image.format == "JPEG":
        image.draft("RGB", draft_scale(full, window, size))
    image = to_rgb(image)
    if image.size == full:
        # Cropped, then resized, as torchvision's resized_crop does: its pixels exactly.
        return np.asarray(_resized(image.crop((left, top, left + w, top + h)), size, interpolation))
    # Decoded at reduced scale: the window falls between pixels there, and PIL's box
    # resamples it where it lies (rounding it to whole pixels would shift it by up to
    # half a reduced pixel, several pixels of the full image).
    sx, sy = image.size[0] / full[0], image.size[1] / full[1]
    box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    return np.asarray(image.resize((size, size), INTERPOLATIONS[interpolation], box=box))


def read_image(path: str | bytes, decode: Decode, size: int, *, seed: int = 0, epoch: int = 0, index: int = 0,
               draft: bool = True) -> np.ndarray:
    """The file ``path`` (or an image file's bytes) as ``[size, size, 3]`` uint8 RGB
    under ``decode``, the window drawn for ``(seed, epoch, index)``. Raises ValueError
    saying what is wrong with a file PIL cannot read."""
    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as image:
            window = decode.window(image.size[1], image.size[0], seed, epoch, index)
            return decode_window(image, window, size, draft=draft, interpolation=decode.interpolation)
    except PIL_ERRORS as e:
        raise ValueError(problem(path, e)) from None


def decodes(cfg) -> dict[str, Decode]:
    """``{"train": ..., "val": ...}``: how a recipe's data section ``cfg`` decodes each
    split when streamed. ``cfg.crop = "random_resized"``: a random window of the training
    images (``crop_scale``, ``crop_ratio``), the centre crop (``val_crop_fraction``) of
    the validation ones; ``"pad"``: both squashed whole (the padded crop then runs on the
    device, as for arrays). Both resampled with ``cfg.crop_interpolation``."""
    filter_ = cfg.crop_interpolation
    if cfg.crop == "random_resized":
        return {"train": Decode("random_resized", tuple(cfg.crop_scale), tuple(cfg.crop_ratio), interpolation=filter_),
                "val": Decode("centre", fraction=cfg.val_crop_fraction, interpolation=filter_)}
    return {"train": Decode("resize", interpolation=filter_), "val": Decode("resize", interpolation=filter_)}


def streamed(cfg) -> bool:
    """Whether the loaders read the dataset of ``cfg`` (a recipe's data section) from
    its files every epoch: ``data.stream``, or shards, which are always streamed."""
    return bool(getattr(cfg, "stream", False)) or cfg.name in SHARD_DATASETS


def open_shards(cfg, split: str) -> ShardSource:
    """The ``split`` of the shards of ``cfg`` (``data.root``, ``data.val_root``:
    ``pipelines.datasets.shards.open_shards``) as a stream, none read."""
    from pipelines.datasets.decode import check_on_corrupt
    from pipelines.datasets.shards import open_shards as listed

    return ShardSource(listed(cfg, split), decodes(cfg)[split], check_on_corrupt(cfg.on_corrupt),
                       cfg.shuffle_buffer)


def open_streamed(cfg, split: str) -> StreamSource | ShardSource | None:
    """What a streaming loader reads of ``split`` when the dataset of ``cfg`` is streamed
    (:func:`streamed`): its shards, or its files; None when it is not streamed (then
    each backend has its own source)."""
    if cfg.name in SHARD_DATASETS:
        return open_shards(cfg, split)
    return open_stream(cfg, split) if getattr(cfg, "stream", False) else None


def open_stream(cfg, split: str) -> StreamSource:
    """The ``split`` of the folder dataset ``cfg.name`` (a recipe's data section) as a
    stream: its files listed (a long-tailed train split subsampled as
    ``pipelines.datasets.load_dataset`` does), none decoded."""
    from pipelines.datasets import list_files
    from pipelines.datasets.decode import check_on_corrupt

    # The calibration share of the training images is read as validation images are.
    decode = decodes(cfg)["train" if split == "train" else "val"]
    return StreamSource(list_files(cfg, split), decode, check_on_corrupt(cfg.on_corrupt))


def left_out(bad: list[tuple[str, str]], source: StreamSource, skipped: list, *, whole_batch: bool) -> None:
    """A batch's unreadable files ``bad`` (``(path, what is wrong)``, in batch order) under
    ``source.on_corrupt``: "error" raises a one-line UserError naming the first; "skip"
    adds each to ``skipped`` (a loader's list) and names it once on stderr, unless they
    are the ``whole_batch``, which is an error too."""
    import sys

    from pipelines.datasets.decode import SKIP_HINT, shown
    from pipelines.errors import UserError

    path, why = bad[0]
    if source.on_corrupt != "skip":
        raise UserError(f"cannot read image {shown(path)}: it {why}; {SKIP_HINT}")
    for path, why in bad:
        if all(path != p for p, _ in skipped):
            skipped.append((path, why))
            print(f"data: left out unreadable image {shown(path)}: it {why} (data.on_corrupt = \"skip\")",
                  file=sys.stderr, flush=True)
    if whole_batch:
        raise UserError(f"every image of a batch was unreadable, e.g. {shown(bad[0][0])}: it {bad[0][1]}; "
                        "fix or remove those files")
