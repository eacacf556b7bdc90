"""What the DALI loader reads: the files of a folder dataset, which DALI decodes itself
(on the GPU where there is one), in-memory arrays, or a stream (``pipelines.stream``,
read by :mod:`pipelines.dali.stream`); the files screened first.

DALI's CPU decoder does not always fail cleanly on a bad file: a text file, a run of
zeros, a JPEG of markers only, a PNG without its end chunk or a GIF can kill the process
with a segmentation fault instead of raising, depending on where the file falls in the
pipeline's first batches. So a file list is screened before the pipeline sees it: each
file must be readable by PIL (decoded at a reduced scale, which still reads every byte),
in one of DALI's formats, and a PNG must end with its IEND chunk. The result is kept in
the decode cache beside the list (same stamp), so a restart reads no file again. A
stream screens each file with the same rules (:func:`probe`) when it is first fed,
during the epoch, instead of all of them before training; a shard stream each sample's
bytes (:mod:`pipelines.dali.shards`).
"""

from __future__ import annotations

import io
import struct
from functools import partial
from pathlib import Path

from pipelines.datasets.folders import FileList
from pipelines.errors import UserError

# Side of the reduced-scale decode the screen asks PIL for (``Image.draft``): small, so a
# JPEG's pixels cost little, while every byte of the file is still read.
SCREEN_SIDE = 8

# PIL's names of the formats DALI is handed: those a folder's file names admit (.jpg,
# .jpeg, .png, .bmp, .webp). DALI's decoder also reads TIFF, but a 1-bit or int32 TIFF
# crashed it, and a TIFF in such a folder is misnamed anyway; GIF it does not read at all.
DALI_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP"})
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The screen's name in the cache: a new rule gets a new name, so no list screened by
# the old rules is taken for one screened by the new.
SCREEN = "dali-screen-3"


def png_unfinished(path: str | bytes) -> str | None:
    """What is wrong with the chunks of the PNG file ``path`` (or its bytes, from a
    shard) (None: they run whole, from the signature to IEND)."""
    held = isinstance(path, bytes)
    with io.BytesIO(path) if held else open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            return "does not start with the PNG signature"
        size = len(path) if held else Path(path).stat().st_size
        while True:
            head = f.read(8)
            if len(head) < 8:
                return "is a PNG that ends before its IEND chunk (truncated)"
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                return None
            if f.tell() + length + 4 > size:
                return f"is a PNG whose {kind.decode('latin-1')!r} chunk runs past the end of the file (truncated)"
            f.seek(length + 4, 1)  # the chunk's data and CRC


def dali_problem(path: str | bytes, image) -> str | None:
    """What makes the file ``path`` (or its bytes; opened by PIL as ``image``) unsafe for
    DALI's decoder; None when it is safe."""
    if image.format not in DALI_FORMATS:
        return (f"is a {image.format} image, which DALI's decoder does not read; convert it to PNG or JPEG, "
                "or set train.loader = 'torch'")
    if image.format == "PNG":
        return png_unfinished(path)
    return None


def probe(path: str | bytes) -> tuple[int, int] | str:
    """``(height, width)`` of the image file ``path`` (or its bytes, from a shard) when
    DALI may be handed it, else what is wrong with it: the screen of :func:`screened`
    for one file (PIL decodes it at a reduced scale, then :func:`dali_problem`). The
    size is the stored one, before any EXIF orientation."""
    from PIL import Image

    from pipelines.datasets.decode import PIL_ERRORS, problem

    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as image:
            width, height = image.size
            image.draft("RGB", (SCREEN_SIDE, SCREEN_SIDE))
            image.load()
            why = dali_problem(path, image)
    except PIL_ERRORS as e:
        why = problem(path, e)
    return why or (height, width)


def screened(files: FileList, *, on_corrupt: str = "error", cache_dir=None) -> FileList:
    """``files`` less those DALI must not be handed. ``on_corrupt="error"`` raises
    UserError naming the first of them (in list order); ``"skip"`` moves them to
    ``skipped`` with what is wrong. ``cache_dir``: where the screen is remembered (None:
    not remembered)."""
    from pipelines.datasets.decode import SKIP_HINT, check_on_corrupt, screen_files, shown

    check_on_corrupt(on_corrupt)
    screen = partial(screen_files, image_size=SCREEN_SIDE, check=dali_problem)
    if cache_dir is None:
        result = screen(files)
    else:
        from pipelines.datasets.cache import cached_screen

        result = cached_screen(files, cache_dir, screen, name=SCREEN)
    found = result.skipped[len(files.skipped):]
    if found and on_corrupt == "error":
        path, why = found[0]
        more = f" ({len(found) - 1} more unreadable files)" if len(found) > 1 else ""
        raise UserError(f"cannot read image {shown(path)}: it {why}{more}; {SKIP_HINT}")
    return result


def open_source(cfg, split: str):
    """``(source, dataset)`` of ``split`` for the DALI loader (``cfg``: the recipe's data
    section): shards (``data.name = "webdataset"``) as a ``ShardSource`` twice
    (``pipelines.stream.open_shards``: none read, each sample screened when first fed);
    with ``cfg.stream`` the ``StreamSource`` twice (``pipelines.stream.open_stream``:
    nothing read yet, each file screened when first fed); else a folder dataset's
    screened ``FileList`` twice (a long-tailed train split, or one less its calibration
    share, stays an array subset), else the decoded ``ArrayDataset`` twice. Writes
    nothing but the decode cache."""
    from pipelines.stream import open_streamed

    source = open_streamed(cfg, split)
    if source is not None:
        return source, source
    from pipelines.datasets import FOLDER_DATASETS

    held = cfg.longtail != "none" or getattr(cfg, "calibration_fraction", 0.0)
    if cfg.name not in FOLDER_DATASETS or (split == "train" and held):
        from pipelines.datasets import load_dataset

        dataset = load_dataset(cfg, split)
        return dataset, dataset
    from pipelines.datasets.cache import default_dir
    from pipelines.datasets.folders import list_folder

    files = list_folder(cfg.root, split, val_fraction=cfg.val_fraction, seed=cfg.seed)
    files = screened(files, on_corrupt=cfg.on_corrupt,
                     cache_dir=(cfg.cache_dir or default_dir()) if cfg.decode_cache else None)
    return files, files
