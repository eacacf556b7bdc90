"""Streams: files decoded every epoch, cropped at decode (pipelines.stream), on the torch
backend (pipelines.torch_stream), against the in-memory path and plain references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from pipelines import make_loader
from pipelines.datasets import list_folder
from pipelines.datasets.decode import decode_files
from pipelines.datasets.testing import photo_like, save_image, write_image_folder, write_unreadable
from pipelines.errors import UserError
from pipelines.stream import Decode, StreamSource, decode_window, read_image
from pipelines.torch import make_loader as torch_loader


def photos(n: int, seed: int = 0, lo: int = 40, hi: int = 90) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` photo-like images of random sizes in ``[lo, hi)`` and 4 classes."""
    return photo_like(n, sizes=(lo, hi), seed=seed), np.arange(n) % 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    images, labels = photos(36)
    write_image_folder(root, images, labels, ext="jpg")
    return list_folder(root, "train")


def stream(files, decode=Decode(), **kwargs):
    options = dict(batch_size=8, image_size=32, normalize=False, device="cpu", num_workers=0, seed=5)
    return make_loader(StreamSource(files, decode), **{**options, **kwargs})


def test_a_whole_image_stream_gives_the_in_memory_pixels_and_draws(folder):
    """Decode "resize" is the decode of the in-memory path, and the views after it draw
    as the in-memory loader draws: the same batches, augmentation and pseudo-labels too."""
    arrays = decode_files(folder, 32)
    options = dict(batch_size=8, image_size=32, normalize=False, device="cpu", seed=5, crop_padding=4)
    streamed = list(stream(folder, **options))
    in_memory = list(torch_loader(arrays, **options))
    assert len(streamed) == len(in_memory) == 5
    for a, b in zip(streamed, in_memory):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_a_window_is_the_full_decode_cropped_and_resized(tmp_path, ext):
    """A window decoded alone equals torchvision's resized_crop of the fully decoded
    image: pixel for pixel from a PNG; from a JPEG at reduced scale (libjpeg's DCT
    scaling), close to it."""
    image = photos(1, seed=1, lo=300, hi=301)[0][0]
    path = save_image(image, tmp_path / f"big.{ext}", ext)
    full = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    for window in ((10, 20, 200, 150), (0, 0, 300, 300), (120, 40, 60, 90)):
        with Image.open(path) as im:
            got = torch.from_numpy(decode_window(im, window, 32)).permute(2, 0, 1)
        want = TF.resized_crop(full, *window, [32, 32], interpolation=InterpolationMode.BILINEAR, antialias=True)
        diff = (got.int() - want.int()).abs()
        if ext == "png" or window[2:] == (300, 300):
            assert diff.max() <= 1, (window, diff.max())
        else:
            assert diff.float().mean() < 3, (window, diff.float().mean())


def test_a_bicubic_window_is_torchvisions_bicubic_resized_crop(tmp_path):
    """``interpolation = "bicubic"``: OpenMixup's Tiny-ImageNet crop, torchvision's
    ``RandomResizedCrop(64, interpolation=3)`` on a PIL image, pixel for pixel from a PNG
    (and the whole image resized bicubically too)."""
    image = photos(1, seed=2, lo=90, hi=91)[0][0]
    path = save_image(image, tmp_path / "photo.png", "png")
    with Image.open(path) as im:
        full = im.convert("RGB")
    for window in ((10, 20, 50, 40), (0, 0, 90, 90), (30, 5, 21, 77)):
        with Image.open(path) as im:
            got = decode_window(im, window, 64, interpolation="bicubic")
        want = np.asarray(TF.resized_crop(full, *window, [64, 64], interpolation=InterpolationMode.BICUBIC))
        assert np.array_equal(got, want), window
        with Image.open(path) as im:
            assert not np.array_equal(got, decode_window(im, window, 64)), window  # not the bilinear pixels
    rrc = Decode("random_resized", interpolation="bicubic")
    want = decode_window(full, rrc.window(90, 90, 5, 2, 7), 64, interpolation="bicubic")
    assert np.array_equal(read_image(str(path), rrc, 64, seed=5, epoch=2, index=7), want)
    with pytest.raises(ValueError, match="nearest"):
        Decode(interpolation="nearest")


def test_a_small_window_of_a_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    path = save_image(photos(1, lo=400, hi=401)[0][0], tmp_path / "big.jpg", "jpg")
    with Image.open(path) as im:
        decode_window(im, (0, 0, 400, 400), 32)  # the whole image: no draft
        assert im.size == (400, 400)
    with Image.open(path) as im:
        im.draft("RGB", (50, 50))
        assert im.size == (50, 50)  # libjpeg's 1/8: what a 32-pixel output of the whole image could use
    with Image.open(path) as im:
        decode_window(im, (0, 0, 200, 200), 32, draft=True)
        assert im.size[0] <= 100  # the window keeps >= 32 pixels a side at 1/4


def test_random_windows_depend_on_seed_epoch_and_index_alone():
    d = Decode("random_resized", scale=(0.2, 0.6), ratio=(0.5, 2.0))
    windows = [d.window(100, 150, 1, e, i) for e in range(3) for i in range(40)]
    assert windows == [d.window(100, 150, 1, e, i) for e in range(3) for i in range(40)]
    assert len(set(windows)) > 100
    for top, left, h, w in windows:
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 150
        assert 0.2 * 0.9 <= h * w / 15000 <= 0.6 * 1.1 or (h, w) == (100, 150)
    assert d.window(100, 150, 2, 0, 0) != d.window(100, 150, 1, 0, 0)
    assert Decode("centre", fraction=0.5).window(100, 150, 0, 0, 0) == (25, 50, 50, 50)


def test_workers_epochs_and_shards(folder):
    rrc = Decode("random_resized")
    one = list(stream(folder, rrc, crop_padding=0))
    two = list(stream(folder, rrc, crop_padding=0, num_workers=2))
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(one, two))
    loader = stream(folder, rrc, crop_padding=0)
    first, second = list(loader), list(loader)
    assert not torch.equal(first[0]["images"], second[0]["images"])
    loader.set_epoch(1)
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(second, loader))
    shards = [torch.cat([b["indices"] for b in stream(folder, rrc, shard_id=s, num_shards=3, drop_last=False)])
              for s in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(len(folder)))


def test_an_unreadable_file_is_named_or_left_out_during_the_epoch(tmp_path):
    images, labels = photos(12)
    write_image_folder(tmp_path, images, labels, ext="jpg")
    bad = write_unreadable(tmp_path / "2" / "zz_bad.jpg", "truncated")
    files = list_folder(tmp_path, "train")
    with pytest.raises(UserError, match="zz_bad.jpg"):
        list(stream(files, Decode("random_resized"), shuffle=False, batch_size=4))
    loader = make_loader(StreamSource(files, Decode("random_resized"), on_corrupt="skip"), batch_size=4,
                         image_size=32, normalize=False, device="cpu", num_workers=0, shuffle=False)
    seen = torch.cat([b["indices"] for b in loader])
    assert len(seen) == len(files) - 1 and files.paths.index(str(bad)) not in seen.tolist()
    assert [p for p, _ in loader.skipped] == [str(bad)]


def test_reading_a_file_reports_what_is_wrong(tmp_path):
    path = write_unreadable(tmp_path / "x.jpg", "not_image")
    with pytest.raises(ValueError, match="not an image"):
        read_image(str(path), Decode(), 16)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_a_batch_holds_each_files_reference_decode(folder, interpolation):
    """What the workers deliver is ``read_image`` of each file with its own window."""
    rrc = Decode("random_resized", scale=(0.1, 0.5), interpolation=interpolation)
    loader = stream(folder, rrc, tasks=(), augment=False, num_workers=1)
    loader.set_epoch(3)
    for batch in loader:
        for image, i in zip(batch["images"], batch["indices"].tolist()):
            want = read_image(folder.paths[i], rrc, 32, seed=5, epoch=3, index=i)
            assert torch.equal(image, torch.from_numpy(want.copy()).permute(2, 0, 1)), i
