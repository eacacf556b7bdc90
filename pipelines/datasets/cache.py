"""Decoded folder datasets kept on disk, so that a restart does not decode every file again.

One entry per (file list, image size) in the cache folder: ``<key>.npy`` holds the decoded
images (``[N, S, S, 3]`` uint8, a plain array: read with ``allow_pickle=False``) and
``<key>.json`` what they were decoded from: the size and modification time of every
file, ``on_corrupt``, the files left out, a checksum of the array. An entry is used only
when all of that still matches; a stale or damaged one is decoded again and replaced.
Both files are written under a temporary name and renamed, the JSON last, so a killed
writer leaves no entry that looks whole. ``<key>.screen.json`` likewise remembers which
files of a list are unreadable, for readers that decode by themselves (DALI).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines.atomic import write_atomic
from pipelines.datasets.arrays import IMAGENET_MEAN, IMAGENET_STD, ArrayDataset
from pipelines.datasets.folders import FileList

FORMAT = "gssl_fast-decoded-1"


def default_dir() -> Path:
    """``$GSSL_FAST_CACHE``, else ``$XDG_CACHE_HOME/gssl_fast/decoded``, else
    ``~/.cache/gssl_fast/decoded``."""
    if os.environ.get("GSSL_FAST_CACHE"):
        return Path(os.environ["GSSL_FAST_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gssl_fast" / "decoded"


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part)
    return h.hexdigest()


def entry_key(files: FileList, image_size: int) -> str:
    """The entry's name: a hash of the file paths, in order, and the image side."""
    return _digest(FORMAT.encode(), str(image_size).encode(), "\0".join(files.paths).encode("utf-8"))


def stamp(files: FileList, on_corrupt: str) -> str | None:
    """A hash of every file's size and modification time and of ``on_corrupt``: any
    file changed, replaced or touched since the entry was written makes it stale.
    None when a file cannot be stat-ed (the decoder then says which)."""
    try:
        stats = [os.stat(p) for p in files.paths]
    except OSError:
        return None
    table = np.asarray([(s.st_size, s.st_mtime_ns) for s in stats], dtype=np.int64).reshape(-1, 2)
    return _digest(on_corrupt.encode(), table.tobytes())


def checksum(images: np.ndarray) -> str:
    return _digest(np.ascontiguousarray(images).data)


def cached_decode(files: FileList, image_size: int, on_corrupt: str, cache_dir,
                  decode: Callable[[], ArrayDataset]) -> ArrayDataset:
    """The decoded dataset of ``files`` from the cache in ``cache_dir``, or ``decode()``
    stored there when the entry is missing, stale or damaged. A cache that cannot be
    written (read-only, full) only warns: the run goes on with the decoded images."""
    folder = Path(cache_dir).expanduser()
    key = entry_key(files, image_size)
    data_path, info_path = folder / f"{key}.npy", folder / f"{key}.json"
    current = stamp(files, on_corrupt)
    found = _read(data_path, info_path, current, files, image_size) if current else None
    if found is not None:
        return found
    dataset = decode()
    if current is None:
        return dataset
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(data_path, lambda f: np.save(f, dataset.images, allow_pickle=False))
        new = dataset.skipped[len(files.skipped):]
        info = {"format": FORMAT, "count": len(dataset), "image_size": image_size, "stamp": current,
                "checksum": checksum(dataset.images), "skipped_at": files.positions(new),
                "skipped": [list(s) for s in new]}
        write_atomic(info_path, lambda f: f.write(json.dumps(info).encode()))
    except OSError as e:
        warnings.warn(f"could not keep the decoded images in {folder} ({e}); they will be decoded again next run",
                      stacklevel=2)
    return dataset


def _read(data_path: Path, info_path: Path, current: str, files: FileList, image_size: int) -> ArrayDataset | None:
    """The entry when it is whole and matches ``current``, else None."""
    try:
        info = json.loads(info_path.read_text())
        if info.get("format") != FORMAT or info.get("stamp") != current:
            return None
        images = np.load(data_path, allow_pickle=False)
        shape = (info["count"], image_size, image_size, 3)
        if images.dtype != np.uint8 or images.shape != shape or checksum(images) != info["checksum"]:
            return None
        _, kept = files.without(_remembered(info))
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError, IndexError):  # damaged: decode again
        return None
    if len(kept) != info["count"]:
        return None
    return ArrayDataset(images, kept.labels, kept.classes, IMAGENET_MEAN, IMAGENET_STD, skipped=kept.skipped)


def _remembered(info: dict) -> dict[int, str]:
    """``{position: what is wrong}`` of the files an entry left out."""
    return {int(i): str(why) for i, (_, why) in zip(info["skipped_at"], info["skipped"], strict=True)}


def cached_screen(files: FileList, cache_dir, screen: Callable[[FileList], FileList], *,
                  name: str = "screen") -> FileList:
    """``screen(files)`` (the readable files, the others in ``skipped``), remembered in
    ``cache_dir`` under the same stamp as a decoded entry: a restart does not read every
    file again to find the unreadable ones. ``name`` tells screens by other rules apart."""
    folder = Path(cache_dir).expanduser()
    info_path = folder / f"{entry_key(files, 0)}.{name}.json"
    current = stamp(files, "skip")
    try:
        info = json.loads(info_path.read_text())
        if current and info.get("format") == FORMAT and info.get("stamp") == current:
            return files.without(_remembered(info))[1]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):  # damaged: screen again
        pass
    screened = screen(files)
    if current is None:
        return screened
    new = screened.skipped[len(files.skipped):]
    info = {"format": FORMAT, "stamp": current, "skipped_at": files.positions(new), "skipped": [list(s) for s in new]}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(info_path, lambda f: f.write(json.dumps(info).encode()))
    except OSError as e:
        warnings.warn(f"could not keep the list of unreadable files in {folder} ({e})", stacklevel=2)
    return screened
