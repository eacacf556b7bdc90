"""Image files on disk: ImageFolder trees and Tiny-ImageNet-200.

Listing and decoding are separate steps: ``list_*`` returns a :class:`FileList` (paths and
labels, nothing decoded), which the DALI pipeline reads itself;
``pipelines.datasets.decode`` turns one into an in-memory :class:`ArrayDataset`.

    ImageFolder:    root/<class>/**/*.jpg|jpeg|png|bmp|webp, or root/train/<class>/... and
                    root/val/<class>/... for both splits
    Tiny-ImageNet:  root/wnids.txt, root/train/<wnid>/images/*.JPEG,
                    root/val/images/*.JPEG labelled by root/val/val_annotations.txt;
                    or root/tiny-imagenet-200/... (root = the folder the zip was unpacked in)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.datasets.arrays import check_split
from pipelines.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_FOLDER = "tiny-imagenet-200"  # the folder the zip unpacks to
TINY_HELP = (
    f"Tiny-ImageNet-200 comes from {TINY_URL}; unzip it and set data.root to the "
    f"{TINY_FOLDER} folder (the one holding wnids.txt) or the folder it was unzipped in; "
    "or fetch it: python -m gssl_fast.fetch tinyimagenet (data.download = true in a recipe)"
)
FOLDER_HELP = (
    "data.root must point at an ImageFolder tree: root/<class>/*.jpg|png, or "
    "root/train/<class>/... and root/val/<class>/... for both splits"
)


@dataclass(frozen=True, eq=False)
class FileList:
    """Image files and their labels, not decoded.

    paths: file paths as strings; labels: ``[N]`` int64 indices into ``classes``.
    skipped: ``(path, what is wrong)`` of files left out as unreadable
        (``pipelines.datasets.decode``, ``on_corrupt="skip"``).
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        paths = tuple(str(p) for p in self.paths)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != len(paths):
            raise ValueError(f"{len(paths)} paths but {labels.shape[0]} labels")
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "skipped", tuple((str(p), str(why)) for p, why in self.skipped))

    def __len__(self) -> int:
        return len(self.paths)

    def without(self, bad: dict[int, str]) -> tuple[np.ndarray, FileList]:
        """``(keep, files)``: the positions kept (``[M]`` int64, in order) and this list
        less the positions of ``bad``, which join ``skipped`` with what is wrong."""
        keep = np.setdiff1d(np.arange(len(self)), np.fromiter(bad, dtype=np.int64, count=len(bad)))
        skipped = self.skipped + tuple((self.paths[i], str(bad[i])) for i in sorted(bad))
        return keep, FileList(tuple(self.paths[i] for i in keep), self.labels[keep], self.classes, skipped)

    def positions(self, skipped) -> list[int]:
        """The positions in this list of the paths of ``skipped`` (``(path, why)`` pairs)."""
        index = {p: i for i, p in enumerate(self.paths)}
        return [index[p] for p, _ in skipped]


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder``, sorted by path; hidden entries skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted((p for p in found if _is_image(p)), key=lambda p: str(p.relative_to(folder)))


def check_name(path) -> str:
    """``path`` as a string, refused when it is not valid UTF-8: DALI cannot open such a
    file, and run folders record paths as UTF-8 text."""
    path = str(path)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise UserError(f"file name {shown} is not valid UTF-8; rename it (e.g. convmv -f latin1 -t utf8 "
                        "--notest -r DATA_ROOT) so that every loader can open it") from None
    return path


def _existing_dir(root, what: str, help_text: str) -> Path:
    if not str(root):
        raise UserError(f"data.root is empty. {help_text}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{what} folder {root} does not exist. {help_text}")
    return root


def list_image_folder(root, classes=None) -> FileList:
    """ImageFolder tree ``root/<class>/...``: one class per subfolder.

    classes: default the sorted subfolder names (label ``k`` = ``classes[k]``); pass the
        train split's classes when listing val so the labels agree (a val subfolder
        outside them is an error, a class without val images is fine).
    Files of a class are every image below its folder (case-insensitive extensions
    ``IMAGE_EXTENSIONS``), sorted by path.
    """
    root = _existing_dir(root, "ImageFolder", FOLDER_HELP)
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    own_classes = classes is None  # a train split: each folder is a class and needs images
    classes = tuple(folders) if own_classes else tuple(classes)
    index = {c: k for k, c in enumerate(classes)}
    paths, labels, empty = [], [], []
    for name in folders:
        files = _images_under(root / name)
        if name not in index:
            if files:
                raise UserError(f"{root / name} is not one of the {len(classes)} train classes; {FOLDER_HELP}")
            continue
        if not files:
            empty.append(root / name)
        paths.extend(check_name(p) for p in files)
        labels.extend([index[name]] * len(files))
    if not paths:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in class folders under {root}. {FOLDER_HELP}")
    if empty and own_classes:
        raise UserError(f"class folder {check_name(empty[0])} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                        "add its images or remove the folder")
    return FileList(tuple(paths), np.asarray(labels, dtype=np.int64), classes)


def _find_tiny(root: Path) -> Path | None:
    """The Tiny-ImageNet folder at ``root``: root itself when it holds ``wnids.txt``, or
    ``root/tiny-imagenet-200`` when root is the folder the zip was unpacked in; else None."""
    for folder in (root, root / TINY_FOLDER):
        if (folder / "wnids.txt").is_file():
            return folder
    return None


def read_wnids(root) -> tuple[str, ...]:
    """The class ids of a Tiny-ImageNet root, in the order of ``wnids.txt``."""
    root = _existing_dir(root, "Tiny-ImageNet", TINY_HELP)
    path = root / "wnids.txt"
    if not path.is_file():
        raise UserError(f"{path} is missing: {root} is not a Tiny-ImageNet-200 folder. {TINY_HELP}")
    wnids = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not wnids or len(set(wnids)) != len(wnids):
        raise UserError(f"{path} must list distinct class ids, one per line")
    return wnids


def list_tinyimagenet(root, split: str) -> FileList:
    """Tiny-ImageNet-200 as it unzips, no file moved; ``root`` is the tiny-imagenet-200
    folder or the folder holding it.

    train: ``train/<wnid>/images/*``, classes in the order of ``wnids.txt``, files sorted.
    val: ``val/images/<file>`` labelled by ``val/val_annotations.txt`` (tab-separated
    ``file, wnid, x0, y0, x1, y1``), in the order of the annotation file.
    """
    check_split(split)
    root = _existing_dir(root, "Tiny-ImageNet", TINY_HELP)
    root = _find_tiny(root) or root
    wnids = read_wnids(root)
    index = {w: k for k, w in enumerate(wnids)}
    paths, labels = [], []
    if split == "train":
        for k, wnid in enumerate(wnids):
            folder = root / "train" / wnid / "images"
            if not folder.is_dir():
                raise UserError(f"Tiny-ImageNet train folder {folder} is missing. {TINY_HELP}")
            files = sorted(p for p in folder.iterdir() if _is_image(p))
            if not files:
                raise UserError(f"Tiny-ImageNet train folder {folder} holds no images; add them or remove "
                                f"{wnid} from wnids.txt")
            paths.extend(check_name(p) for p in files)
            labels.extend([k] * len(files))
    else:
        notes = root / "val" / "val_annotations.txt"
        if not notes.is_file():
            raise UserError(f"Tiny-ImageNet val labels {notes} are missing. {TINY_HELP}")
        for n, line in enumerate(notes.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1].strip() not in index:
                raise UserError(
                    f"{notes}, line {n}: expected 'file<TAB>wnid<TAB>box' with a wnid of wnids.txt, got {line!r}"
                )
            path = root / "val" / "images" / fields[0].strip()
            if not path.is_file():
                raise UserError(f"{notes}, line {n} names {fields[0].strip()!r}, which is not in {path.parent}; "
                                "restore the file or delete the line")
            paths.append(check_name(path))
            labels.append(index[fields[1].strip()])
    if not paths:
        raise UserError(f"no Tiny-ImageNet {split} images found under {root}. {TINY_HELP}")
    return FileList(tuple(paths), np.asarray(labels, dtype=np.int64), wnids)


def list_folder(root, split: str = "train", *, val_fraction: float = 0.0, seed: int = 0) -> FileList:
    """Either layout: Tiny-ImageNet when ``root/wnids.txt`` or
    ``root/tiny-imagenet-200/wnids.txt`` exists, else ImageFolder (``root/<split>`` when
    root has ``train/`` and ``val/``, else root itself: its images are the train split,
    less a held-out ``val_fraction`` of each class drawn with ``seed``, the val split).

    Every reader of folders (the torch datasets, DALI, the FFCV conversion) lists them
    here, so a root means the same files to each of them.
    """
    check_split(split)
    base = _existing_dir(root, "image", FOLDER_HELP)
    tiny = _find_tiny(base)
    split_dirs = tiny is not None or ((base / "train").is_dir() and (base / "val").is_dir())
    if split_dirs and val_fraction:
        raise UserError(f"data.val_fraction = {val_fraction} holds images out of a single tree, but {base} has its "
                        "own val split; set data.val_fraction = 0")
    if tiny is not None:
        return list_tinyimagenet(tiny, split)
    if split_dirs:
        train = list_image_folder(base / "train")
        return train if split == "train" else list_image_folder(base / "val", train.classes)
    if not val_fraction:
        if split == "val":
            raise UserError(f"{base} has no val/ folder, so there is no val split: set data.val_fraction "
                            "(e.g. 0.1) to hold out that share of each class, seeded by data.seed, or give "
                            f"root/train/ and root/val/. {FOLDER_HELP}")
        return list_image_folder(base)
    return held_out(list_image_folder(base), split, val_fraction, seed)


def held_out(files: FileList, split: str, fraction: float, seed: int) -> FileList:
    """The ``split`` of ``files`` when ``fraction`` of each class is held out as val, drawn
    with ``seed`` (``pipelines.sampling.held_out_positions``)."""
    from pipelines.sampling import held_out_positions

    if not 0 < fraction < 1:
        raise UserError(f"data.val_fraction must be in (0, 1), got {fraction}")
    val = held_out_positions(files.labels, fraction, seed)
    keep = val if split == "val" else np.setdiff1d(np.arange(len(files)), val)
    return FileList(tuple(files.paths[i] for i in keep), files.labels[keep], files.classes)


def tinyimagenet_files(cfg, split: str) -> FileList:
    """Registry entry: the files of Tiny-ImageNet-200 at ``cfg.root`` (a recipe's data section)."""
    return list_tinyimagenet(cfg.root, split)


def imagefolder_files(cfg, split: str) -> FileList:
    """Registry entry: the files of an ImageFolder (or Tiny-ImageNet) tree at ``cfg.root``
    (a single tree's val split: ``cfg.val_fraction`` of it, seeded by ``cfg.seed``)."""
    return list_folder(cfg.root, split, val_fraction=cfg.val_fraction, seed=cfg.seed)
