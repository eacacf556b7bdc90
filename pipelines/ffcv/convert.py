"""Writing datasets to FFCV ``.beton`` files, and reading back what was written.

A ``.beton`` holds three fields per sample: ``image`` (``RGBImageField``, raw uint8
pixels or JPEG), ``label`` and ``index`` (``IntField``: the sample's position in the
source dataset, so that batches carry ``indices``). Beside it, ``PATH.json`` records
what the file cannot: class names, the dataset's default mean and std, the image side.

A stream's ``.beton`` (:func:`convert_stream`, read by ``pipelines.ffcv.stream``) holds
a folder's files as JPEGs at their own size, written file by file (never the whole
dataset in memory), with two more fields, ``height`` and ``width``: each file's own
size, on which ``Decode.window`` draws its window (0 x 0: a file that could not be read).
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np

from pipelines.datasets import ArrayDataset
from pipelines.datasets.arrays import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from pipelines.datasets.decode import PIL_ERRORS, SKIP_HINT, problem, shown, to_rgb
from pipelines.errors import UserError, unknown_name
from pipelines.sources import as_array_dataset
from pipelines.system import usable_cores

FIELDS = ("image", "label", "index")
# convert(mode=...) -> RGBImageField write_mode
MODES = {"raw": "raw", "jpg": "jpg"}
INFO_FORMAT = "gssl_fast-beton-1"
# A stream's .beton: JPEG files at their own size (convert_stream).
STREAM_FIELDS = (*FIELDS, "height", "width")
STREAM_FORMAT = "gssl_fast-jpeg-beton-1"
# A longer side past this is resized (and re-encoded) when written: FFCV's crop decoder
# holds a full-size decode of each image of the batches in flight (FFCV's ImageNet
# example writes at most 256..512 pixels a side).
STREAM_MAX_SIDE = 512
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


# ---------------------------------------------------------------- streams: JPEG files


def jpeg_bytes(path: str, max_side: int | None, quality: int) -> tuple[np.ndarray, tuple, tuple]:
    """``(data [n] uint8, (h, w) stored, (H, W) of the file)``: the file ``path`` as one
    JPEG. A baseline RGB or gray JPEG within ``max_side`` keeps its own bytes (checked by a
    1/8-scale decode, which reads all of its data); any other file is decoded as
    ``pipelines.stream.read_image`` decodes it, resized to ``max_side`` on its longer side
    (PIL bilinear, antialiased) when longer, and encoded at ``quality``. Raises ValueError
    saying what is wrong with a file PIL cannot read."""
    from PIL import Image

    try:
        raw = Path(path).read_bytes()
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
            scale = min(1.0, max_side / max(width, height)) if max_side else 1.0
            if image.format == "JPEG" and image.mode in ("RGB", "L") and scale == 1.0:
                image.draft(image.mode, (max(width // 8, 1), max(height // 8, 1)))
                image.load()
                return np.frombuffer(raw, np.uint8), (height, width), (height, width)
            out = (max(1, round(width * scale)), max(1, round(height * scale)))
            if image.format == "JPEG":
                image.draft("RGB", out)
            image = to_rgb(image)
            if image.size != out:
                image = image.resize(out, Image.BILINEAR)
            encoded = io.BytesIO()
            image.save(encoded, "JPEG", quality=quality)
    except PIL_ERRORS as e:
        raise ValueError(problem(path, e)) from None
    return np.frombuffer(encoded.getvalue(), np.uint8), (out[1], out[0]), (height, width)


def _encode_jpeg(destination, sample, malloc) -> None:
    """``RGBImageField.encode`` for samples that are JPEG already: ``(data [n] uint8,
    height, width)`` stored as FFCV stores a JPEG sample."""
    from ffcv.fields.rgb_image import IMAGE_MODES

    data, height, width = sample
    destination["mode"] = IMAGE_MODES["jpg"]
    destination["height"], destination["width"] = height, width
    destination["data_ptr"], storage = malloc(data.nbytes)
    storage[:] = data


class _Files:
    """The indexable FFCV's writer reads (in its worker processes): sample ``i`` ->
    ``((jpeg, h, w), label, index, H, W)`` of file ``i``; ``H = W = 0`` (and a black
    8 x 8 JPEG) for a file that cannot be read."""

    def __init__(self, files, max_side: int | None, quality: int):
        self.files, self.max_side, self.quality = files, max_side, quality

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        try:
            data, stored, size = jpeg_bytes(self.files.paths[i], self.max_side, self.quality)
        except ValueError:
            data, stored, size = _blank_jpeg(), (8, 8), (0, 0)
        return (data, *stored), int(self.files.labels[i]), int(i), *size


def _blank_jpeg() -> np.ndarray:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "JPEG")
    return np.frombuffer(out.getvalue(), np.uint8)


def stream_fingerprint(files, *, jpeg_quality: int, max_side: int | None) -> str:
    """A short hash of what a stream's ``.beton`` is written from: the paths, labels and
    classes, the size and modification time of every 97th file, and how it is encoded."""
    import hashlib

    h = hashlib.blake2b(digest_size=12)
    h.update(repr((len(files), files.classes, jpeg_quality, max_side)).encode())
    h.update("\n".join(files.paths).encode())
    h.update(np.ascontiguousarray(files.labels, dtype=np.int64).tobytes())
    for path in files.paths[::97]:
        try:
            st = os.stat(path)
            h.update(repr((st.st_size, st.st_mtime_ns)).encode())
        except OSError:
            h.update(b"missing")
    return h.hexdigest()


def convert_stream(source, path: str | os.PathLike, *, jpeg_quality: int = 90,
                   max_side: int | None = STREAM_MAX_SIDE, num_workers: int | None = None) -> Path:
    """Writes the files of ``source`` (a ``pipelines.stream.StreamSource``) to the
    ``.beton`` file ``path`` as JPEGs at their own size (:func:`jpeg_bytes`: a JPEG's own
    bytes where it can, else re-encoded at ``jpeg_quality``; a longer side past
    ``max_side`` resized, None: never), one file at a time in ``num_workers`` writer
    processes (None: the cores available, at most 8); and ``path.json``, which records
    ``source.decode``, the loader's default. A file that cannot be read stops the
    conversion, naming it, or with ``source.on_corrupt = "skip"`` is recorded in the
    JSON's ``skipped`` (``[index, path, why]``), which the loader leaves out of its batches.
    Returns ``path``."""
    from dataclasses import asdict

    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader
    from ffcv.writer import DatasetWriter

    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    path, files = Path(path), source.files
    if path.suffix != ".beton":
        raise UserError(f"FFCV output {path} must end in .beton")
    if not len(files):
        raise UserError(f"nothing to write to {path}: the dataset has no images")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = RGBImageField(write_mode="jpg", jpeg_quality=jpeg_quality)
    # Its samples are JPEG bytes already; on disk it is FFCV's own RGBImageField (the
    # writer records a field's type by its class, so only this instance's encode differs).
    image.encode = _encode_jpeg
    fields = {"image": image, **{name: IntField() for name in STREAM_FIELDS[1:]}}
    workers = max(1, min(num_workers or min(usable_cores(), 8), -(-len(files) // CHUNK)))
    DatasetWriter(str(path), fields, num_workers=workers).from_indexed_dataset(
        _Files(files, max_side, jpeg_quality), chunksize=CHUNK)
    reader = Reader(str(path))
    height = reader.metadata[f"f{STREAM_FIELDS.index('height')}"]
    skipped = [[int(i), files.paths[i], _what_is_wrong(files.paths[i])] for i in np.flatnonzero(height == 0)]
    if skipped and source.on_corrupt != "skip":
        path.unlink()
        _, bad, why = skipped[0]
        more = f" ({len(skipped) - 1} more unreadable files)" if len(skipped) > 1 else ""
        raise UserError(f"cannot read image {shown(bad)}: it {why}{more}; {SKIP_HINT}")
    for _, bad, why in skipped:
        print(f"data: left out unreadable image {shown(bad)}: it {why} (data.on_corrupt = \"skip\")",
              file=sys.stderr, flush=True)
    info = {
        "format": STREAM_FORMAT, "num_samples": len(files), "decode": asdict(source.decode),
        "jpeg_quality": jpeg_quality, "max_side": max_side, "classes": list(files.classes),
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "skipped": skipped,
        "fingerprint": stream_fingerprint(files, jpeg_quality=jpeg_quality, max_side=max_side),
    }
    info_path(path).write_text(json.dumps(info, indent=1) + "\n")
    return path


def check_stream(path: str | os.PathLike, source, what: str) -> dict:
    """The JSON of the stream ``.beton`` ``path`` after checking that it was written from
    the files of ``source`` (``what`` names them in the message) by :func:`convert_stream`:
    its fingerprint, under the encoding options it records."""
    info = read_info(path)
    same = info.get("format") == STREAM_FORMAT and info.get("fingerprint") == stream_fingerprint(
        source.files, jpeg_quality=info.get("jpeg_quality"), max_side=info.get("max_side"))
    if not same:
        raise UserError(f"{path} was not written from {what} ({len(source.files)} files, or some changed since); "
                        "delete it to have it written again")
    return info


def _what_is_wrong(path: str) -> str:
    """Why :func:`jpeg_bytes` cannot read ``path`` (asked again here: FFCV's writer
    processes report nothing but the sample)."""
    try:
        jpeg_bytes(path, None, 90)
    except ValueError as e:
        return str(e)
    return "could not be read"


def check_beton(path: str | os.PathLike, *, stream: bool = False):
    """Opens ``path`` with FFCV's reader; returns it after checking the fields.

    Raises UserError when the file is missing, unreadable or lacks a field of :data:`FIELDS`
    (:data:`STREAM_FIELDS` for a stream's ``.beton``, whose images may have any size).
    """
    from ffcv.reader import Reader

    path = Path(path)
    hint = ("write it again with pipelines.ffcv.convert_stream (a run does so once it is deleted)" if stream
            else f"write it with: python -m gssl_fast.convert RECIPE.toml --split train --out {path}")
    if not path.is_file():
        raise UserError(f"FFCV file not found: {path}; {hint}")
    try:
        reader = Reader(str(path))
    except (AssertionError, ValueError, IndexError, OSError) as e:
        raise UserError(f"{path} is not a readable FFCV .beton ({e}); {hint}") from None
    missing = [f for f in (STREAM_FIELDS if stream else FIELDS) if f not in reader.handlers]
    if missing:
        raise UserError(f"{path} has fields {sorted(reader.handlers)}, lacks {missing}; {hint}")
    meta = reader.metadata[f"f{list(reader.handlers).index('image')}"]
    if stream or not len(meta):
        return reader
    if np.any(meta["width"] != meta["width"][0]) or np.any(meta["height"] != meta["width"][0]):
        raise UserError(f"{path} holds images of several sizes or non-square ones; {hint} (it resizes them)")
    return reader
