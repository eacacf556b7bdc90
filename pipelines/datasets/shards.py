"""WebDataset shards: any dataset written as tar files of encoded images, and listed back.

    write_dataset(cfg, split, out, shard_size)    a recipe's split -> <out>/<split>-000000.tar, ...
    write_shards(members, out, split, ...)        (key, ext, bytes, label) -> shards + listing
    list_shards(root, split)                       a brace pattern or a folder -> ShardSet
    open_shards(cfg, split)                        data.root / data.val_root of a recipe -> ShardSet

On disk, for a split of ``N`` samples:
    <split>-000000.tar ...  samples of ``shard_size``, each two members: ``<key>.jpg`` (a
                            folder's JPEG file, its bytes untouched) or ``<key>.png`` (any
                            other image, PNG-encoded; a folder's PNG untouched), and
                            ``<key>.cls`` (the label, decimal text). ``key`` is the sample's
                            position in the split (``%09d``), the ``index`` of its
                            random-resized window (``pipelines.stream.Decode.window``), so
                            shards and the folder stream of the same files give the same
                            images. The training split is written in an order drawn from
                            a seed (shards of a class-sorted folder would hold one class
                            each); a reader's shuffle buffer then only mixes further.
    <split>-000000.idx ...  DALI's index of each tar (``wds2idx``'s format v1.2: per sample
                            ``ext offset size name`` of each member), for
                            ``fn.readers.webdataset(index_paths=...)`` (the DALI loader
                            here feeds the bytes instead: ``pipelines.dali.shards``)
    <split>.json            the listing: classes, total, and per shard its name, sample
                            count, keys and labels (member order), so a reader knows every
                            count without reading a tar
Every file is written under a temporary name and renamed; the listing last, so a
folder with a listing holds every shard it names.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from pipelines.atomic import write_atomic, write_text_atomic
from pipelines.datasets.decode import PIL_ERRORS, to_rgb
from pipelines.errors import UserError

SHARD_SIZE = 1000  # samples per shard: ~110 MB of ImageNet JPEGs
FORMAT = "gssl_fast webdataset shards"
VERSION = 1
IMAGE_EXTS = ("jpg", "png")  # the image member of a sample: fn.readers.webdataset(ext=["jpg;png", "cls"])
LABEL_EXT = "cls"
READERS = ("torch", "dali")  # train.loader values that read shards (pipelines.torch_shards, pipelines.dali.shards)
SHARD_NAME = re.compile(r"^(?P<split>.+)-(?P<number>\d+)\.tar$")
SHARDS_HELP = ("write shards with: python -m gssl_fast.convert RECIPE --format webdataset --out DIR; then "
               "data.root = 'DIR/train-{000000..000099}.tar' (or DIR) and data.val_root = 'DIR/val-{...}.tar'")


@dataclass(frozen=True, eq=False)
class ShardSet:
    """The listed shards of one split, none read.

    paths: the shard files, in listed order; counts: samples of each (``[S]`` ints);
    keys, labels: ``[N]`` int64 every listed sample's key (its position in the split as
    written) and label, sorted by key; classes: the class names (label ``k`` =
    ``classes[k]``); key: the recipe key that named the shards (for messages).
    """

    paths: tuple[str, ...]
    counts: tuple[int, ...]
    keys: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    key: str = "data.root"

    def __len__(self) -> int:
        return len(self.labels)


# ---- writing


def image_member(path: str) -> tuple[str, bytes]:
    """``(ext, bytes)`` of an image file as a shard member: a JPEG's or PNG's bytes as
    they are (by their first bytes, whatever the file's name), any other image as the
    PNG of its RGB pixels (``decode.to_rgb``: what a reader would make of it). A file PIL
    cannot read is kept as it is (under its name's extension) for the reader to name or
    skip, as the folder stream does."""
    data = Path(path).read_bytes()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png", data
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg", data
    try:
        with Image.open(io.BytesIO(data)) as image:
            return "png", png_bytes(to_rgb(image))
    except PIL_ERRORS:
        return ("png" if path.lower().endswith(".png") else "jpg"), data


def png_bytes(image) -> bytes:
    """A PIL image or ``[H, W, 3]`` uint8 array as PNG bytes."""
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))).save(buffer, "PNG")
    return buffer.getvalue()


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> tuple[int, int]:
    """Adds ``name`` holding ``data`` (mode 0644, owner 0, time 0: shards of the same
    data are the same bytes); ``(offset of its data in the tar, size)``."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))
    return tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, len(data)


def _write_shard(path: Path, members: list[tuple[int, str, bytes, int]]) -> str:
    """One tar of ``members`` (``(key, ext, image bytes, label)``) at ``path``, written
    under a temporary name and renamed; returns its DALI index (``wds2idx`` v1.2)."""
    lines = [f"v1.2 {len(members)}"]

    def write(f) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, ext, data, label in members:
                parts = []
                for suffix, payload in ((ext, data), (LABEL_EXT, str(label).encode("ascii"))):
                    name = f"{key:09d}.{suffix}"
                    offset, size = _tar_member(tar, name, payload)
                    parts.append(f"{suffix} {offset} {size} {name}")
                lines.append(" ".join(parts))

    write_atomic(path, write)
    return "\n".join(lines) + "\n"


def write_shards(members: Iterable[tuple[int, str, bytes, int]], out, split: str, classes, *,
                 shard_size: int = SHARD_SIZE) -> Path:
    """Shards ``<out>/<split>-%06d.tar`` of ``members`` (``(key, ext, bytes, label)``:
    ``ext`` in ``IMAGE_EXTS``, ``label`` an index into ``classes``), ``shard_size``
    samples each in the order given, each with its DALI index; then the listing
    ``<out>/<split>.json``, which is returned."""
    if shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {shard_size}")
    out = Path(out)
    shards, chunk = [], []

    def flush() -> None:
        name = f"{split}-{len(shards):06d}"
        index = _write_shard(out / f"{name}.tar", chunk)
        write_text_atomic(out / f"{name}.idx", index)
        shards.append({"name": f"{name}.tar", "samples": len(chunk), "keys": [m[0] for m in chunk],
                       "labels": [int(m[3]) for m in chunk]})
        chunk.clear()

    for member in members:
        if member[1] not in IMAGE_EXTS:
            raise ValueError(f"a shard's image member is one of {IMAGE_EXTS}, got {member[1]!r}")
        chunk.append(member)
        if len(chunk) == shard_size:
            flush()
    if chunk:
        flush()
    if not shards:
        raise UserError(f"the {split} split holds no images: no shards written to {out}")
    listing = {"format": FORMAT, "version": VERSION, "split": split, "total": sum(s["samples"] for s in shards),
               "classes": list(classes), "shards": shards}
    return write_text_atomic(out / f"{split}.json", json.dumps(listing) + "\n")


def written_order(n: int, seed: int | None) -> np.ndarray:
    """``[n]`` int64 the positions in the order they are written: drawn from ``seed``
    (``pipelines.sampling.generator``), or as they are when ``seed`` is None."""
    if seed is None:
        return np.arange(n, dtype=np.int64)
    import torch

    from pipelines.sampling import generator

    return torch.randperm(n, generator=generator(seed, "shards", "write")).numpy()


def write_dataset(cfg, split: str, out, *, shard_size: int = SHARD_SIZE, seed: int | None = None) -> Path:
    """The ``split`` of the dataset of ``cfg`` (a recipe's data section) as shards in
    ``out``, in the order drawn from ``seed`` (None: in order); returns the listing.
    A folder dataset (``pipelines.datasets.FOLDER_DATASETS``) keeps its files' bytes
    (:func:`image_member`: nothing decoded, the long tail of ``cfg`` applied), any other
    is decoded at ``cfg.image_size`` and PNG-encoded."""
    from pipelines.datasets import FOLDER_DATASETS, list_files, load_dataset

    if cfg.name in FOLDER_DATASETS:
        files = list_files(cfg, split)
        order, classes, labels = written_order(len(files), seed), files.classes, files.labels
        members = ((int(i), *image_member(files.paths[i]), int(labels[i])) for i in order)
    else:
        dataset = load_dataset(cfg, split)
        order, classes, labels = written_order(len(dataset), seed), dataset.classes, dataset.labels
        members = ((int(i), "png", png_bytes(dataset.images[i]), int(labels[i])) for i in order)
    return write_shards(members, out, split, classes, shard_size=shard_size)


# ---- listing


def _expand(pattern: str) -> list[str]:
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


def list_shards(root, split: str = "train", *, key: str = "data.root") -> ShardSet:
    """The shards ``root`` names: a brace pattern (``DIR/train-{000000..000099}.tar``,
    or one ``.tar``), whose listing is ``<DIR>/<name>.json`` (``name``: the shards' file
    name up to ``-<number>.tar``), or a folder holding ``<split>.json`` and every shard
    it lists. ``key``: the recipe key that gave ``root``, for messages."""
    root = str(root)
    if not root:
        raise UserError(f"{key} is empty: name the shards. {SHARDS_HELP}")
    folder = Path(root).expanduser()
    if folder.is_dir():
        listing = _read_listing(folder / f"{split}.json", key, root)
        names = [s["name"] for s in listing["shards"]]
    else:
        paths = [Path(p).expanduser() for p in _expand(root)]
        matches = [SHARD_NAME.match(p.name) for p in paths]
        if not all(matches) or len({(p.parent, m["split"]) for p, m in zip(paths, matches)}) != 1:
            raise UserError(f"{key} = {root!r} must name shards <split>-<number>.tar of one split in one folder "
                            f"(or be that folder). {SHARDS_HELP}")
        folder = paths[0].parent
        listing = _read_listing(folder / f"{matches[0]['split']}.json", key, root)
        names = [p.name for p in paths]
    return _selected(listing, folder, names, key)


def _read_listing(path: Path, key: str, root: str) -> dict:
    if not path.is_file():
        raise UserError(f"{key} = {root!r}: the shards' listing {path} does not exist. {SHARDS_HELP}")
    try:
        listing = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a shard listing ({e}); write the shards again. {SHARDS_HELP}") from None
    if not isinstance(listing, dict) or listing.get("format") != FORMAT or listing.get("version") != VERSION:
        raise UserError(f"{path} is not a listing of {FORMAT} version {VERSION}; write the shards again. "
                        f"{SHARDS_HELP}")
    return listing


def _selected(listing: dict, folder: Path, names: list[str], key: str) -> ShardSet:
    """The shards ``names`` of ``listing`` (each listed there and present in ``folder``)."""
    listed = {s["name"]: s for s in listing["shards"]}
    if len(set(names)) != len(names):
        raise UserError(f"{key} names a shard twice; name each shard once")
    chosen = []
    for name in names:
        if name not in listed:
            names_listed = [s["name"] for s in listing["shards"]]
            raise UserError(f"{key}: shard {folder / name} is not listed in {folder / listing['split']}.json, "
                            f"which lists {names_listed[0]} .. {names_listed[-1]}")
        if not (folder / name).is_file():
            raise UserError(f"{key}: shard {folder / name} does not exist (listed in {listing['split']}.json); "
                            "restore it or write the shards again")
        chosen.append(listed[name])
    keys = np.concatenate([np.asarray(s["keys"], dtype=np.int64) for s in chosen])
    labels = np.concatenate([np.asarray(s["labels"], dtype=np.int64) for s in chosen])
    order = np.argsort(keys, kind="stable")
    return ShardSet(tuple(str(folder / s["name"]) for s in chosen), tuple(int(s["samples"]) for s in chosen),
                    keys[order], labels[order], tuple(listing["classes"]), key)


def open_shards(cfg, split: str) -> ShardSet:
    """The shards of ``split`` of a recipe's data section ``cfg``: ``cfg.root`` for
    train; ``cfg.val_root`` for val, or else the val split of the folder ``cfg.root``."""
    if split == "train" or cfg.val_root:
        root, key = (cfg.root, "data.root") if split == "train" else (cfg.val_root, "data.val_root")
        return list_shards(root, split, key=key)
    if not Path(cfg.root).expanduser().is_dir():
        raise UserError(f"data.val_root is empty and data.root = {cfg.root!r} is not a folder: name the validation "
                        f"shards in data.val_root. {SHARDS_HELP}")
    return list_shards(cfg.root, "val")


def samples(path: str) -> Iterator[dict]:
    """The samples of the shard ``path`` in order, read with ``webdataset``'s tar
    iterators: ``{"__key__": "000000012", "jpg" or "png": bytes, "cls": bytes}``.
    A tar that ends early raises ``tarfile.ReadError`` (or ends quietly on a member
    boundary: compare the count with the listing)."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    with open(path, "rb") as f:
        yield from group_by_keys({**member, "__url__": path} for member in tar_file_iterator(f))
