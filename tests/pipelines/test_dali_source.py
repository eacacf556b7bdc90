"""DALI is never handed a file that could crash it: the screen names every kind of bad
file (the kinds that killed DALI's CPU decoder with a segmentation fault among them) and
lets every good one through; the trainer on a folder with bad files ends with the line
naming one, whatever the seed and batch, never with a signal."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.dali.source import screened
from pipelines.datasets.folders import FileList
from pipelines.datasets.testing import CONVERTIBLE, write_convertible, write_tinyimagenet, write_unreadable
from pipelines.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def photo(seed: int = 0, side: int = 32) -> np.ndarray:
    """``[side, side, 3]`` uint8: a smooth gradient with noise, compressing like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([x, y, (x + y) / 2], -1) * rng.uniform(80, 200, 3) + rng.normal(0, 12, (side, side, 3))
    return np.clip(base + rng.uniform(0, 50, 3), 0, 255).astype(np.uint8)


def tiff_of(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "TIFF")
    return out.getvalue()


def encoded(fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    Image.fromarray(photo()).save(out, fmt, **kw)
    return out.getvalue()


# Bytes DALI 2.x's CPU decoder crashed on (segmentation fault: a file it cannot parse as an
# image, early in a batch of 32 or more) or failed on, by kind.
UNSAFE = {
    "zeros": lambda: bytes(1024),
    "text": lambda: b"hello\n",
    "html": lambda: b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
    "jpeg_markers_only": lambda: b"\xff\xd8\xff\xd9",
    "jpeg_magic_then_noise": lambda: b"\xff\xd8\xff\xe0" + np.random.default_rng(1).bytes(1000) + b"\xff\xd9",
    "jpeg_truncated": lambda: encoded("JPEG")[: len(encoded("JPEG")) // 2],
    "png_magic_then_noise": lambda: b"\x89PNG\r\n\x1a\n" + np.random.default_rng(2).bytes(1000),
    "png_without_iend": lambda: encoded("PNG")[:-12],
    "png_truncated": lambda: encoded("PNG")[: len(encoded("PNG")) // 2],
    "gif": lambda: encoded("GIF"),
    "tiff": lambda: encoded("TIFF"),
    "tiff_1bit": lambda: tiff_of(Image.fromarray(photo()).convert("1")),
    "tiff_int32": lambda: tiff_of(Image.fromarray(photo()[..., 0].astype(np.int32) * 1000, "I")),
    "empty": lambda: b"",
}
SAFE = {
    "jpeg": lambda: encoded("JPEG"),
    "png": lambda: encoded("PNG"),
    "png_with_bytes_after_iend": lambda: encoded("PNG") + b"trailing data",
    "bmp": lambda: encoded("BMP"),
    "webp": lambda: encoded("WEBP", lossless=True),
}


def one_file(tmp_path: Path, data: bytes, name: str = "x.JPEG") -> FileList:
    path = tmp_path / name
    path.write_bytes(data)
    return FileList((str(path),), np.zeros(1, dtype=np.int64), ("a",))


@pytest.mark.parametrize("kind", UNSAFE)
def test_every_unsafe_file_is_named_or_skipped(tmp_path, kind):
    files = one_file(tmp_path, UNSAFE[kind]())
    with pytest.raises(UserError, match=r"cannot read image .*x\.JPEG: it "):
        screened(files)
    kept = screened(files, on_corrupt="skip")
    assert len(kept) == 0 and kept.skipped[0][0] == files.paths[0]


@pytest.mark.parametrize("kind", [*SAFE, *CONVERTIBLE])
def test_every_good_file_goes_through(tmp_path, kind):
    if kind in SAFE:
        files = one_file(tmp_path, SAFE[kind]())
    else:
        path = write_convertible(tmp_path / "x", kind, photo())
        files = FileList((str(path),), np.zeros(1, dtype=np.int64), ("a",))
    assert screened(files) == files


def test_the_screen_is_remembered_and_redone_for_a_changed_file(tmp_path):
    files = one_file(tmp_path, SAFE["png"]())
    cache = tmp_path / "cache"
    assert screened(files, cache_dir=cache) == files
    Path(files.paths[0]).write_bytes(UNSAFE["png_without_iend"]())
    os.utime(files.paths[0], ns=(1, 1))  # another modification time: the remembered screen is stale
    with pytest.raises(UserError, match="IEND"):
        screened(files, cache_dir=cache)


def bad_tinyimagenet(root: Path) -> Path:
    """A Tiny-ImageNet-shaped folder of 300 JPEG photos at 32 px in 10 classes; in one
    class a truncated JPEG, an empty ``.JPEG`` and a text file named ``.JPEG``; grayscale,
    RGBA and 16-bit PNGs in others."""
    labels = np.arange(300) % 10
    write_tinyimagenet(root, [photo(i) for i in range(300)], labels, [photo(i) for i in range(20)], np.arange(20) % 10,
                       ext="JPEG")
    images = root / "train" / "n00000003" / "images"
    for kind in ("truncated", "empty", "not_image"):
        write_unreadable(images / f"bad_{kind}.JPEG", kind)
    for k, kind in enumerate(("gray", "rgba", "gray16", "rgb16")):
        write_convertible(root / "train" / f"n0000000{k + 4}" / "images" / f"odd_{kind}", kind, photo(k))
    return root


@pytest.mark.slow
def test_the_trainer_names_a_bad_file_for_every_seed_and_batch_never_crashes(tmp_path):
    root = bad_tinyimagenet(tmp_path / "tiny")
    # Before the screen, (1, 100) and (2, 64) died with a segmentation fault on this folder.
    for seed, batch in [(1, 32), (2, 64), (3, 32), (4, 64), (5, 32), (6, 64), (7, 32), (1, 100)]:
        proc = subprocess.run(
            [sys.executable, "-m", "gssl_fast.train", str(ROOT / "recipes" / "tinyimagenet.toml"),
             "--out", str(tmp_path / f"run{seed}_{batch}"), "--set", f"data.root={root}", "--set", "train.loader=dali",
             "--set", "data.image_size=32", "--set", "model.backbone=resnet8_cifar", "--set", "train.epochs=1",
             "--set", "train.global_batch_size=0", "--set", f"train.batch_size={batch}", "--set", f"train.seed={seed}",
             "--set", "data.decode_cache=false"],
            cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        assert proc.returncode == 2, (seed, batch, proc.returncode, proc.stderr[-2000:])
        assert last.startswith("error: cannot read image ") and "n00000003" in last and "bad_" in last, last
