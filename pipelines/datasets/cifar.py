"""CIFAR-10 and CIFAR-100, "python version" (https://www.cs.toronto.edu/~kriz/cifar.html).

Each file is a pickled dict (written by Python 2, so its keys are bytes) with ``data``:
``[N, 3072]`` uint8, channel-major (1024 red, 1024 green, 1024 blue values, rows of 32),
and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100).

    cifar-10-batches-py/   data_batch_1 .. data_batch_5 (train), test_batch (val), batches.meta
    cifar-100-python/      train, test, meta

A pickle can run any code on load, so the files go through :class:`PlainDataUnpickler`,
which rebuilds containers, strings, numbers and NumPy arrays and refuses everything else
before it runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from pipelines.datasets.arrays import CIFAR_MEAN, CIFAR_STD, ArrayDataset, check_split
from pipelines.errors import UserError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
SIDE = 32


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a class or function outside the plain-data allowlist."""


def _latin1_bytes(text, encoding="utf-8"):
    """Stand-in for ``_codecs.encode``: Python 3 pickles bytes as ``encode(str, 'latin1')``
    below protocol 3. Only that call is rebuilt; a codec lookup could import modules."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedGlobal(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


def _empty_bytes(*args):
    """Stand-in for ``bytes``: protocol 2 pickles ``b''`` as ``bytes()``; nothing else."""
    if args:
        raise RefusedGlobal("bytes() with arguments")
    return b""


def _plain_globals() -> dict[tuple[str, str], object]:
    table = {
        ("_codecs", "encode"): _latin1_bytes,
        ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    # The array rebuilders live in numpy.core (NumPy 1, and pickles written by it) and
    # numpy._core (NumPy 2); both spellings name the same functions.
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # NumPy 1
        from numpy.core import multiarray, numeric

    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return table


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds only plain data: dicts, lists, tuples, str, bytes,
    numbers, booleans, None and NumPy arrays. Any other class or function a pickle
    names raises :class:`RefusedGlobal` before it is called."""

    _allowed: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str):
        if PlainDataUnpickler._allowed is None:
            PlainDataUnpickler._allowed = _plain_globals()
        found = PlainDataUnpickler._allowed.get((module, name))
        if found is None:
            raise RefusedGlobal(f"{module}.{name}")
        return found


def load_plain_pickle(path: str | Path):
    """Reads a pickle that must hold plain data only (see :class:`PlainDataUnpickler`).

    Python 2 strings come back as bytes (``encoding="bytes"``). Raises UserError naming
    the file if it holds anything else or is not a readable pickle.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return PlainDataUnpickler(f, encoding="bytes").load()
    except RefusedGlobal as e:
        raise UserError(
            f"{path} holds something other than plain data (it names {e}); it was not executed. "
            f"Use the original CIFAR 'python version' files from {CIFAR_URL}"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, OSError) as e:
        raise UserError(f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {e})") from None


def _str_keys(obj, path: Path) -> dict:
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, expected a dict of CIFAR arrays")
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def read_batch(path: str | Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR file -> images ``[N, 32, 32, 3]`` uint8 (HWC) and labels ``[N]`` int64."""
    path = Path(path)
    batch = _str_keys(load_plain_pickle(path), path)
    for key in ("data", label_key):
        if key not in batch:
            raise UserError(f"{path} has no {key!r} entry (keys: {sorted(batch)}); is it a CIFAR file?")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * SIDE * SIDE:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path}: 'data' must be an [N, 3072] uint8 array, got {got}")
    try:
        labels = np.asarray(batch[label_key])
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: {label_key!r} is not a list of integers ({e})") from None
    if labels.shape != (data.shape[0],) or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise UserError(
            f"{path}: {label_key!r} must hold {data.shape[0]} integers (one per image), "
            f"got {labels.dtype} {labels.shape}"
        )
    # Row layout is channel-major [3, 32, 32]; the project keeps images as HWC.
    images = data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _class_names(path: Path, key: str, num_classes: int) -> tuple[str, ...]:
    if not path.is_file():
        return tuple(str(i) for i in range(num_classes))
    names = _str_keys(load_plain_pickle(path), path).get(key)
    if not isinstance(names, (list, tuple)) or len(names) != num_classes:
        raise UserError(f"{path}: {key!r} must list {num_classes} class names")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _dataset_folder(root: str | Path, folder: str, title: str, archive: str) -> Path:
    """``root`` itself, or ``root/folder`` when root is its parent."""
    help_text = (
        f"{title} comes from {CIFAR_URL} (the \"python version\", {archive}); extract it "
        f"(tar xzf {archive}) and set data.root to the {folder} folder; or fetch it: python -m "
        f"gssl_fast.fetch {title.lower().replace('-', '')} (data.download = true in a recipe)"
    )
    if not str(root):
        raise UserError(f"data.root is empty. {help_text}")
    root = Path(root).expanduser()
    if (root / folder).is_dir():
        return root / folder
    if not root.is_dir():
        raise UserError(f"{title} folder {root} does not exist. {help_text}")
    return root


def _read(root, split, *, folder, title, archive, files, label_key, meta, meta_key, num_classes):
    check_split(split)
    base = _dataset_folder(root, folder, title, archive)
    paths = [base / name for name in files[split]]
    for path in paths:
        if not path.is_file():
            raise UserError(
                f"{title} file {path} is missing. {title} comes from {CIFAR_URL} "
                f"(\"python version\", {archive}); data.root must point at the extracted {folder} folder"
            )
    parts = [read_batch(path, label_key) for path in paths]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{base}: labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    classes = _class_names(base / meta, meta_key, num_classes)
    return ArrayDataset(images, labels, classes, CIFAR_MEAN, CIFAR_STD)


def read_cifar10(root: str | Path, split: str) -> ArrayDataset:
    """CIFAR-10 train (50000 images, ``data_batch_1..5`` in order) or val (``test_batch``).

    root: the ``cifar-10-batches-py`` folder, or the folder that contains it.
    """
    return _read(
        root, split, folder="cifar-10-batches-py", title="CIFAR-10", archive="cifar-10-python.tar.gz",
        files={"train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"]},
        label_key="labels", meta="batches.meta", meta_key="label_names", num_classes=10,
    )


def read_cifar100(root: str | Path, split: str) -> ArrayDataset:
    """CIFAR-100 with its 100 fine labels: train (``train``) or val (``test``).

    root: the ``cifar-100-python`` folder, or the folder that contains it.
    """
    return _read(
        root, split, folder="cifar-100-python", title="CIFAR-100", archive="cifar-100-python.tar.gz",
        files={"train": ["train"], "val": ["test"]},
        label_key="fine_labels", meta="meta", meta_key="fine_label_names", num_classes=100,
    )


def cifar10(cfg, split: str) -> ArrayDataset:
    """Registry entry: CIFAR-10 from ``cfg.root`` (a DataConfig)."""
    return read_cifar10(cfg.root, split)


def cifar100(cfg, split: str) -> ArrayDataset:
    """Registry entry: CIFAR-100 from ``cfg.root`` (a DataConfig)."""
    return read_cifar100(cfg.root, split)
