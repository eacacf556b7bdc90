"""Image files -> uint8 RGB arrays with PIL, and what to do with a file that cannot be read.

Every image PIL can read becomes ``[S, S, 3]`` uint8 RGB: grayscale, palette, RGBA
(alpha dropped), CMYK and 16-bit images are converted (16-bit values scaled by 1/257 and
rounded, as DALI's decoder does), never refused. A file that cannot be read (empty,
truncated, not an image, a decompression bomb) is an error naming it and what is wrong,
or with ``on_corrupt="skip"`` is left out and recorded in the dataset's ``skipped``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from pipelines.datasets.arrays import IMAGENET_MEAN, IMAGENET_STD, ArrayDataset, resize_image
from pipelines.datasets.folders import FileList, imagefolder_files, tinyimagenet_files
from pipelines.errors import UserError, unknown_name
from pipelines.system import usable_cores

# data.on_corrupt: what an unreadable image file does.
ON_CORRUPT = {"error": "stop with a one-line error naming the file", "skip": "leave it out and count it"}
SKIP_HINT = 'fix or remove the file, or set data.on_corrupt = "skip" to leave out unreadable images'
# What PIL raises on a file it cannot read.
PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# PIL modes holding more than 8 bits per value: scaled to 0..255 instead of clipped.
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def check_on_corrupt(on_corrupt: str) -> str:
    if on_corrupt not in ON_CORRUPT:
        raise unknown_name("data.on_corrupt", on_corrupt, ON_CORRUPT)
    return on_corrupt


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> mode RGB. 16-bit and 32-bit values become ``round(v / 257)``
    clipped to 0..255 (PIL's own ``convert`` clips them at 255 instead)."""
    if image.mode in WIDE_MODES:
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


def read_rgb(path: str, image_size: int) -> np.ndarray:
    """The image file ``path`` as ``[S, S, 3]`` uint8 RGB, resized to ``image_size``
    (PIL bilinear, antialiased when shrinking). Raises ValueError saying what is wrong."""
    try:
        with Image.open(path) as image:
            return np.asarray(resize_image(to_rgb(image), image_size))
    except PIL_ERRORS as e:
        raise ValueError(problem(path, e)) from None


def problem(path: str | bytes, error: BaseException) -> str:
    """What is wrong with the image file ``path`` (or the image file's bytes, from a
    shard), which PIL failed to read with ``error``."""
    try:
        size = len(path) if isinstance(path, bytes) else os.path.getsize(path)
    except OSError as e:
        return f"cannot be opened ({e.strerror})"
    if size == 0:
        return "is empty (0 bytes)"
    if isinstance(error, Image.UnidentifiedImageError):
        if isinstance(path, bytes):
            head = path[:8]
        else:
            with open(path, "rb") as f:
                head = f.read(8)
        return f"is not an image in a format PIL knows (its first bytes are {head!r})"
    if isinstance(error, Image.DecompressionBombError):
        return f"is too large to decode safely ({error})"
    return f"is truncated or corrupt ({error})"


def shown(path: str) -> str:
    """``path`` as text that prints on any terminal (undecodable bytes escaped)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def record_skipped(path, skipped: dict) -> dict[str, list]:
    """Adds the images left out of each split (``skipped``: ``{split: [(file, what is
    wrong)]}``) to the list at ``path`` (a line each: split, file, what is wrong;
    tab-separated), each file once, the rows already there kept; written atomically,
    and only when something is new. Returns ``{split: rows new to the list}``."""
    from pathlib import Path

    from pipelines.atomic import write_text_atomic

    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    listed = {tuple(line.split("\t")[:2]) for line in lines}
    new = {}
    for split, rows in skipped.items():
        for file, why in rows:
            if (split, shown(file)) not in listed:
                listed.add((split, shown(file)))
                new.setdefault(split, []).append((file, why))
    if new:
        lines += [f"{split}\t{shown(file)}\t{why}" for split, rows in new.items() for file, why in rows]
        write_text_atomic(path, "".join(line + "\n" for line in lines))
    return new


def _each(n: int, fn, workers: int) -> None:
    """``fn(i)`` for ``i`` in ``0..n-1`` on ``workers`` threads (PIL releases the GIL
    while decoding); 0 = the cores this process may use, 1 = no thread pool."""
    workers = workers or usable_cores()
    if workers == 1 or n < 2:
        for i in range(n):
            fn(i)
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(fn, range(n)):
            pass


def _decode_all(paths, image_size: int, workers: int) -> tuple[np.ndarray, dict[int, str]]:
    """``([N, S, S, 3]`` uint8, ``{index: what is wrong}``) of every file of ``paths``."""
    out = np.zeros((len(paths), image_size, image_size, 3), dtype=np.uint8)
    bad: dict[int, str] = {}

    def decode(i: int) -> None:
        try:
            out[i] = read_rgb(paths[i], image_size)
        except ValueError as e:
            bad[i] = str(e)

    _each(len(paths), decode, workers)
    return out, bad


def decode_files(files: FileList, image_size: int, *, workers: int = 0, on_corrupt: str = "error") -> ArrayDataset:
    """Decodes every file to RGB at ``image_size`` square (see :func:`read_rgb`).

    workers: decoding threads; 0 = the cores this process may use, 1 = no thread pool.
    on_corrupt: ``"error"`` raises UserError naming the first unreadable file (in list
        order); ``"skip"`` leaves unreadable files out (``skipped`` of the result lists
        them with what is wrong).
    Returns images ``[N, S, S, 3]`` uint8 with the ImageNet normalization.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    check_on_corrupt(on_corrupt)
    images, bad = _decode_all(files.paths, image_size, workers)
    if bad and on_corrupt == "error":
        first = min(bad)
        raise UserError(f"cannot read image {shown(files.paths[first])}: it {bad[first]}; {SKIP_HINT}")
    keep, kept = files.without(bad)
    images = images[keep] if bad else images
    return ArrayDataset(images, kept.labels, kept.classes, IMAGENET_MEAN, IMAGENET_STD, skipped=kept.skipped)


def screen_files(files: FileList, *, workers: int = 0, image_size: int = 8, check=None) -> FileList:
    """``files`` less the ones PIL cannot read, which go to ``skipped``: for readers
    that decode by themselves (DALI). Every file is decoded once (JPEGs at reduced
    scale, which still reads every byte). ``check(path, image) -> str | None``: a reader's
    own rule, what else is wrong with a file PIL read (None: nothing)."""
    bad: dict[int, str] = {}

    def screen(i: int) -> None:
        path = files.paths[i]
        try:
            with Image.open(path) as image:
                image.draft("RGB", (image_size, image_size))
                image.load()
                why = check(path, image) if check else None
        except PIL_ERRORS as e:
            why = problem(path, e)
        if why:
            bad[i] = why

    _each(len(files), screen, workers)
    return files.without(bad)[1] if bad else files


def first_unreadable(paths) -> tuple[str, str] | None:
    """``(path, what is wrong)`` of the first of ``paths`` PIL cannot read, else None:
    names the file behind a decoder's failure that does not name it."""
    for path in paths:
        try:
            read_rgb(path, 1)
        except ValueError as e:
            return path, str(e)
    return None


def decoded(files: FileList, cfg) -> ArrayDataset:
    """``files`` decoded at ``cfg.image_size`` under ``cfg.on_corrupt``, through the
    decode cache in ``cfg.cache_dir`` ("" = ``cache.default_dir()``) unless
    ``cfg.decode_cache`` is false."""
    def decode() -> ArrayDataset:
        return decode_files(files, cfg.image_size, on_corrupt=cfg.on_corrupt)

    if not cfg.decode_cache:
        return decode()
    from pipelines.datasets.cache import cached_decode, default_dir

    check_on_corrupt(cfg.on_corrupt)
    return cached_decode(files, cfg.image_size, cfg.on_corrupt, cfg.cache_dir or default_dir(), decode)


def tinyimagenet(cfg, split: str) -> ArrayDataset:
    """Registry entry: Tiny-ImageNet-200 from ``cfg.root`` at ``cfg.image_size``."""
    return decoded(tinyimagenet_files(cfg, split), cfg)


def imagefolder(cfg, split: str) -> ArrayDataset:
    """Registry entry: an ImageFolder (or Tiny-ImageNet) tree at ``cfg.root``, ``cfg.image_size``
    (a single tree's val split: ``cfg.val_fraction`` of it, seeded by ``cfg.seed``)."""
    return decoded(imagefolder_files(cfg, split), cfg)
