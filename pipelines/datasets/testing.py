"""Writers of small datasets in the exact on-disk formats the readers expect.

For tests (here and in the loader and trainer tests) and demos: no dataset can be
downloaded, so fixtures are written from arrays, e.g. ``make_shapes(...).images``.

    write_cifar10(root, images, labels)            root = a cifar-10-batches-py folder
    write_cifar100(root, images, labels)           root = a cifar-100-python folder
    write_image_folder(root, images, labels)       root/<class>/<i>.png
    write_imagenet_style(root, per_class, ...)     root/{train,val}/<wnid>/*.JPEG: photo-like JPEGs of mixed sizes
    write_tinyimagenet(root, train_images, train_labels, val_images, val_labels)
    write_cifar10_archive(path, images, labels)    cifar-10-python.tar.gz, as published
    write_cifar100_archive(path, images, labels)   cifar-100-python.tar.gz
    write_tinyimagenet_archive(path, ...)          tiny-imagenet-200.zip (JPEG, with test/)
    write_unreadable(path, kind)                   a file no reader can decode (UNREADABLE)
    write_convertible(path, kind, image)           ``image`` stored in another mode (CONVERTIBLE)

Every writer creates ``root`` (an archive writer: the file ``path``) and returns it as a
Path. Images are ``[N, H, W, 3]`` uint8 (CIFAR: H = W = 32), or for the folder writers
any sequence of ``[H, W, 3]`` uint8 arrays (mixed sizes allowed). Use PNG where a test
compares pixels: JPEG is lossy.
"""

from __future__ import annotations

import os
import pickle
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "bmp": "BMP", "webp": "WEBP"}


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """``[N, 32, 32, 3]`` uint8 -> ``[N, 3072]`` channel-major rows, as in the CIFAR files."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"CIFAR images must be [N, 32, 32, 3] uint8, got {images.dtype} {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def _dump(path: Path, obj: dict) -> None:
    # Protocol 2 with bytes keys and bytes strings: what the Python 2 originals decode to.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_batch(name: str, images, label_keys: dict[str, np.ndarray]) -> dict:
    """One CIFAR file's dict: ``label_keys`` maps "labels" / "fine_labels"... to ``[N]`` ints."""
    rows = _cifar_rows(images)
    if any(len(v) != len(rows) for v in label_keys.values()):
        raise ValueError(f"{name}: {len(rows)} images but {[len(v) for v in label_keys.values()]} labels")
    batch = {
        b"batch_label": name.encode(),
        b"data": rows,
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(rows))],
    }
    for key, values in label_keys.items():
        batch[key.encode()] = [int(v) for v in values]
    return batch


def write_cifar10(root, images, labels, *, val_images=None, val_labels=None, classes=CIFAR10_CLASSES) -> Path:
    """CIFAR-10 "python version" in ``root``: the train images split in order over
    ``data_batch_1..5``, ``test_batch`` from ``val_*`` (default: the train arrays again),
    and ``batches.meta`` with ``classes`` (None: no meta file).

    images: ``[N, 32, 32, 3]`` uint8 (N >= 5); labels: ``[N]`` integers in 0..9.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels)
    parts = np.array_split(np.arange(len(labels)), 5)
    images = np.asarray(images)
    for i, part in enumerate(parts, 1):
        batch = _cifar_batch(f"training batch {i} of 5", images[part], {"labels": labels[part]})
        _dump(root / f"data_batch_{i}", batch)
    val_images = images if val_images is None else val_images
    val_labels = labels if val_labels is None else np.asarray(val_labels)
    _dump(root / "test_batch", _cifar_batch("testing batch 1 of 1", val_images, {"labels": val_labels}))
    if classes is not None:
        _dump(root / "batches.meta", {
            b"label_names": [c.encode() for c in classes],
            b"num_cases_per_batch": len(parts[0]),
            b"num_vis": 3072,
        })
    return root


def write_cifar100(root, images, labels, *, val_images=None, val_labels=None, classes=None) -> Path:
    """CIFAR-100 "python version" in ``root``: ``train``, ``test`` (default: the train arrays
    again) with ``fine_labels`` (and ``coarse_labels = fine // 5``), and ``meta`` with
    ``classes`` as ``fine_label_names`` (None: ``class_000`` .. ``class_099``; an empty
    tuple: no meta file).

    images: ``[N, 32, 32, 3]`` uint8; labels: ``[N]`` integers in 0..99.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels)
    val_images = images if val_images is None else val_images
    val_labels = labels if val_labels is None else np.asarray(val_labels)
    for name, imgs, labs in (("train", images, labels), ("test", val_images, val_labels)):
        keys = {"fine_labels": labs, "coarse_labels": labs // 5}
        _dump(root / name, _cifar_batch(name, imgs, keys))
    classes = tuple(f"class_{k:03d}" for k in range(100)) if classes is None else tuple(classes)
    if classes:
        _dump(root / "meta", {
            b"fine_label_names": [c.encode() for c in classes],
            b"coarse_label_names": [f"super_{k:02d}".encode() for k in range(20)],
        })
    return root


def save_image(image: np.ndarray, path, ext: str = "png") -> Path:
    """Writes one ``[H, W, 3]`` uint8 image; the format follows ``ext`` (png, jpg, jpeg,
    bmp, webp; WebP lossless, JPEG quality 95)."""
    fmt = FORMATS.get(ext.lower())
    if fmt is None:
        raise ValueError(f"unknown image extension {ext!r}; valid: {', '.join(FORMATS)}")
    options = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path, format=fmt, **options)
    return Path(path)


def _class_names(labels: np.ndarray, classes, prefix: str) -> tuple[str, ...]:
    if classes is not None:
        return tuple(classes)
    count = int(labels.max()) + 1 if labels.size else 0
    return tuple(f"{prefix}{k:03d}" for k in range(count))


def write_image_folder(root, images: Sequence[np.ndarray], labels, *, ext: str = "png", classes=None) -> Path:
    """ImageFolder tree ``root/<classes[label]>/<i:06d>.<ext>`` (i = position in ``images``).

    classes: folder names, default ``class_000``, ``class_001``...; the reader sorts them,
    so give sorted names when the labels must round-trip. Every class gets a folder.
    """
    root = Path(root)
    labels = np.asarray(labels, dtype=np.int64)
    classes = _class_names(labels, classes, "class_")
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        save_image(image, root / classes[label] / f"{i:06d}.{ext}", ext)
    return root


def photo_like(n: int, *, sizes: tuple[int, int] = (40, 90), seed: int = 0) -> list[np.ndarray]:
    """``n`` smooth random ``[H, W, 3]`` uint8 images, each side drawn from ``sizes``
    (``[lo, hi)``): colour fields of ~24-pixel detail, which JPEG keeps as photos."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(*sizes, 2))
        coarse = rng.integers(0, 256, (h // 24 + 2, w // 24 + 2, 3), dtype=np.uint8)
        out.append(np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC)))
    return out


def write_imagenet_style(root, per_class: tuple[int, int], classes: int, *, sizes: tuple[int, int] = (40, 90),
                         seed: int = 0, ext: str = "JPEG") -> Path:
    """An ImageNet-style tree: ``root/train/<wnid>/*.<ext>`` and ``root/val/<wnid>/*.<ext>``
    with ``per_class = (train, val)`` :func:`photo_like` images of each of ``classes``
    classes (wnid-like folder names ``n0000000k``)."""
    root = Path(root)
    names = tuple(f"n{k:08d}" for k in range(classes))
    for split, count, salt in (("train", per_class[0], 0), ("val", per_class[1], 1)):
        labels = np.repeat(np.arange(classes), count)
        write_image_folder(root / split, photo_like(len(labels), sizes=sizes, seed=seed * 2 + salt), labels,
                           ext=ext, classes=names)
    return root


def write_tinyimagenet(
    root, train_images, train_labels, val_images, val_labels, *, ext: str = "png", wnids=None
) -> Path:
    """Tiny-ImageNet-200 layout with ``len(wnids)`` classes in ``root``.

    wnids: class ids in ``wnids.txt`` order (label ``k`` = ``wnids[k]``), default
        ``n00000000``, ``n00000001``...
    Writes ``wnids.txt``, ``words.txt``, ``train/<wnid>/images/<wnid>_<j:04d>.<ext>``
    (j counts the class's images in order, zero-padded so sorted order is written order)
    with ``train/<wnid>/<wnid>_boxes.txt``, ``val/images/val_<i>.<ext>`` and
    ``val/val_annotations.txt`` (file, wnid, full-image box; tab-separated).
    """
    root = Path(root)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    val_labels = np.asarray(val_labels, dtype=np.int64)
    wnids = _class_names(np.concatenate([train_labels, val_labels]), wnids, "n00000")
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (root / "words.txt").write_text("".join(f"{w}\tthing number {k}\n" for k, w in enumerate(wnids)))
    boxes = {w: [] for w in wnids}
    for wnid in wnids:
        (root / "train" / wnid / "images").mkdir(parents=True, exist_ok=True)
    for image, label in zip(train_images, train_labels):
        wnid = wnids[label]
        name = f"{wnid}_{len(boxes[wnid]):04d}.{ext}"
        save_image(image, root / "train" / wnid / "images" / name, ext)
        h, w = np.asarray(image).shape[:2]
        boxes[wnid].append(f"{name}\t0\t0\t{w - 1}\t{h - 1}\n")
    for wnid, lines in boxes.items():
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(lines))
    (root / "val" / "images").mkdir(parents=True, exist_ok=True)
    notes = []
    for i, (image, label) in enumerate(zip(val_images, val_labels)):
        name = f"val_{i}.{ext}"
        save_image(image, root / "val" / "images" / name, ext)
        h, w = np.asarray(image).shape[:2]
        notes.append(f"{name}\t{wnids[label]}\t0\t0\t{w - 1}\t{h - 1}\n")
    (root / "val" / "val_annotations.txt").write_text("".join(notes))
    return root


def _archive_of(write_folder, path, folder: str) -> Path:
    """Runs ``write_folder(dir)`` on ``<tmp>/<folder>`` and packs that folder, as the
    archive's one top-level folder, into ``path`` (``.zip``, else ``.tar.gz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp) / folder)
        if path.suffix != ".zip":
            with tarfile.open(path, "w:gz") as tar:
                tar.add(Path(tmp) / folder, arcname=folder)
            return path
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for dirpath, dirnames, filenames in os.walk(Path(tmp) / folder):
                dirnames.sort()  # folders get their own entries, as in the published zip
                for name in [dirpath, *(os.path.join(dirpath, f) for f in sorted(filenames))]:
                    zf.write(name, os.path.relpath(name, tmp))
    return path


def write_cifar10_archive(path, images, labels, **kwargs) -> Path:
    """``cifar-10-python.tar.gz`` at ``path``: :func:`write_cifar10` (same arguments) under
    the member folder ``cifar-10-batches-py/``."""
    return _archive_of(lambda root: write_cifar10(root, images, labels, **kwargs), path, "cifar-10-batches-py")


def write_cifar100_archive(path, images, labels, **kwargs) -> Path:
    """``cifar-100-python.tar.gz`` at ``path``: :func:`write_cifar100` (same arguments) under
    the member folder ``cifar-100-python/``."""
    return _archive_of(lambda root: write_cifar100(root, images, labels, **kwargs), path, "cifar-100-python")


def write_tinyimagenet_archive(path, train_images, train_labels, val_images, val_labels, *,
                               test_images=(), ext: str = "JPEG", wnids=None) -> Path:
    """``tiny-imagenet-200.zip`` at ``path``: :func:`write_tinyimagenet` (upper-case
    ``.JPEG`` files, as published) under ``tiny-imagenet-200/``, plus the unlabelled
    ``test/images/test_<i>.<ext>``."""
    def write(root: Path) -> None:
        write_tinyimagenet(root, train_images, train_labels, val_images, val_labels, ext=ext, wnids=wnids)
        (root / "test" / "images").mkdir(parents=True)
        for i, image in enumerate(test_images):
            save_image(image, root / "test" / "images" / f"test_{i}.{ext}", ext)

    return _archive_of(write, path, "tiny-imagenet-200")


# Files a reader must refuse by name (or skip), and images it must convert to RGB.
UNREADABLE = ("truncated", "empty", "not_image")
CONVERTIBLE = {  # kind -> file extension
    "gray": "png", "gray16": "png", "rgb16": "png", "rgba": "png", "palette": "png", "cmyk": "jpg",
}


def write_unreadable(path, kind: str) -> Path:
    """A file with an image extension that cannot be decoded: ``truncated`` (the first
    half of a JPEG), ``empty`` (0 bytes) or ``not_image`` (text)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        rng = np.random.default_rng(0)
        save_image(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), path, "jpg")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_image":
        path.write_text("this is a text file, not an image\n" * 8)
    else:
        raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(UNREADABLE)}")
    return path


def _png16(path: Path, values: np.ndarray) -> None:
    """A 16-bit PNG of ``values`` (``[H, W]`` gray or ``[H, W, 3]`` RGB, 0..65535), written
    chunk by chunk: PIL cannot write 16-bit RGB."""
    import struct
    import zlib

    h, w = values.shape[:2]
    colour = 2 if values.ndim == 3 else 0
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def write_convertible(path, kind: str, image: np.ndarray) -> Path:
    """``image`` (``[H, W, 3]`` uint8) stored as a ``kind`` of :data:`CONVERTIBLE`: gray
    (its first channel, 8 or 16 bits: ``v * 257``), 16-bit RGB (``v * 257``), RGBA (an
    alpha of noise), a 256-colour palette, or CMYK JPEG. ``path`` takes the kind's
    extension."""
    if kind not in CONVERTIBLE:
        raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(CONVERTIBLE)}")
    path = Path(path).with_suffix("." + CONVERTIBLE[kind])
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.asarray(image, dtype=np.uint8)
    if kind in ("gray16", "rgb16"):
        values = image.astype(np.uint16) * 257
        _png16(path, values[..., 0] if kind == "gray16" else values)
        return path
    pil = Image.fromarray(image)
    if kind == "gray":
        pil = Image.fromarray(image[..., 0])
    elif kind == "rgba":
        alpha = np.random.default_rng(0).integers(0, 256, image.shape[:2], dtype=np.uint8)
        pil = Image.fromarray(np.dstack([image, alpha]), "RGBA")
    elif kind == "palette":
        pil = pil.convert("P", palette=Image.Palette.ADAPTIVE)
    elif kind == "cmyk":
        pil = pil.convert("CMYK")
    pil.save(path, FORMATS[CONVERTIBLE[kind]])
    return path
