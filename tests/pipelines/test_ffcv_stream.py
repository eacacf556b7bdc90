"""The FFCV stream: a folder's JPEG files written to a .beton at their own size
(pipelines.ffcv.convert.convert_stream), each image decoded in the window
pipelines.stream.Decode draws for (seed, epoch, index), against read_image.

Every FFCV loader compiles its pipeline (seconds on a small CPU): the tests share one
written .beton and build few loaders, with one FFCV thread unless threads are the point.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("ffcv", reason="the ffcv extra is not installed (pip install -e .[ffcv])")

from pipelines.datasets import list_folder  # noqa: E402
from pipelines.datasets.testing import save_image, write_image_folder, write_unreadable  # noqa: E402
from pipelines.errors import UserError  # noqa: E402
from pipelines.ffcv import convert_stream, kept_source, make_loader, open_source, read_info  # noqa: E402
from pipelines.ffcv.convert import jpeg_bytes  # noqa: E402
from pipelines.stream import Decode, StreamSource, read_image  # noqa: E402
from pipelines.views import CropFlip  # noqa: E402
from tests.pipelines.loader_contract import collect  # noqa: E402
from tests.pipelines.test_stream import photos  # noqa: E402

# The decoder's one call back into Python per batch (pipelines.ffcv.stream), said once at compile time.
pytestmark = pytest.mark.filterwarnings("ignore:Code running in object mode")

SEED, SIZE = 5, 32
RRC = Decode("random_resized")
# Mean absolute difference (levels of 255) of an image from read_image's exact window:
# FFCV decodes with libjpeg-turbo's fast DCT, at reduced scale, and resizes with OpenCV's
# area filter; another window of the same image differs by tens of levels.
CLOSE, CLOSE_ON_AVERAGE = 6.0, 2.5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ffcv_stream")
    images, labels = photos(30, lo=40, hi=150)
    write_image_folder(root, images, labels, ext="jpg")
    return list_folder(root, "train")


@pytest.fixture(scope="module")
def beton(files, tmp_path_factory):
    return convert_stream(StreamSource(files, RRC), tmp_path_factory.mktemp("beton") / "train-jpeg.beton",
                          num_workers=1)


def loader(source, **kwargs):
    options = dict(batch_size=8, image_size=SIZE, augment=False, tasks=(), normalize=False, device="cpu",
                   num_workers=1, seed=SEED)
    return make_loader(source, **{**options, **kwargs})


def images_by_index(batches, key="images") -> dict[int, np.ndarray]:
    """``{dataset index: [S, S, 3] uint8}`` of an epoch's batches."""
    out = {}
    for b in batches:
        for i, image in zip(b["indices"].tolist(), b[key].permute(0, 2, 3, 1).numpy()):
            out[i] = image
    return out


def distances(images: dict, files, decode: Decode, epoch: int) -> np.ndarray:
    """Per image, the mean absolute difference from read_image of its window (exact:
    a full-size decode)."""
    return np.array([np.abs(image.astype(np.int16) - read_image(files.paths[i], decode, SIZE, seed=SEED, epoch=epoch,
                                                                 index=i, draft=False)).mean()
                     for i, image in images.items()])


def test_writing_keeps_each_jpeg_and_its_size(files, beton):
    from ffcv.reader import Reader

    reader = Reader(str(beton))
    image, height, width = (reader.metadata[f"f{list(reader.handlers).index(k)}"] for k in ("image", "height", "width"))
    sizes = [Image.open(p).size for p in files.paths]
    assert len({s for s in sizes}) > 10  # images of many sizes
    assert height.tolist() == [h for _, h in sizes] and width.tolist() == [w for w, _ in sizes]
    assert (image["height"] == height).all() and (image["width"] == width).all() and (image["mode"] == 0).all()
    data, stored, size = jpeg_bytes(files.paths[3], 512, 90)
    assert data.tobytes() == open(files.paths[3], "rb").read() and stored == size  # the file's own bytes
    info = read_info(beton)
    assert info["format"] == "gssl_fast-jpeg-beton-1" and info["num_samples"] == len(files)
    assert Decode(**info["decode"]) == RRC and info["classes"] == list(files.classes) and info["skipped"] == []


def test_files_past_max_side_or_not_jpeg_are_re_encoded(tmp_path):
    big = save_image(photos(1, lo=300, hi=301)[0][0], tmp_path / "big.jpg", "jpg")
    data, stored, size = jpeg_bytes(str(big), 100, 90)
    assert size == (300, 300) and stored == (100, 100)
    assert Image.open(io.BytesIO(data.tobytes())).size == (100, 100)
    png = save_image(photos(1, lo=50, hi=51)[0][0], tmp_path / "small.png", "png")
    data, stored, size = jpeg_bytes(str(png), 512, 95)
    decoded = np.asarray(Image.open(io.BytesIO(data.tobytes())))
    assert stored == size == (50, 50) and np.abs(decoded.astype(int) - np.asarray(Image.open(png))).mean() < 2


def test_batches_are_each_images_window_epoch_after_epoch(files, beton):
    """Each image is its window of Decode.window for (seed, epoch, index): close to
    read_image's pixels of that window, far from the next epoch's; set_epoch replays an
    epoch bit for bit."""
    stream = loader(beton)
    first, second = collect(stream), collect(stream)
    assert len(first) == len(stream) == 4
    labels = torch.cat([b["labels"] for b in first])
    assert torch.equal(labels, torch.from_numpy(files.labels)[torch.cat([b["indices"] for b in first])])
    for epoch, batches in enumerate((first, second)):
        images = images_by_index(batches)
        assert sorted(images) == list(range(len(files)))
        near, far = distances(images, files, RRC, epoch), distances(images, files, RRC, 1 - epoch)
        assert near.max() < CLOSE and near.mean() < CLOSE_ON_AVERAGE, near
        assert np.median(far) > 4 * CLOSE, far
    stream.set_epoch(0)
    again = collect(stream)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first, again) for k in a)


def test_shards_are_disjoint_cover_the_epoch_and_decode_as_one(files, beton):
    """Three shards give every image once, each the pixels the unsharded loader (two FFCV
    threads) gives it: the windows depend on the index, not on the shard or the threads."""
    whole = images_by_index(collect(loader(beton, num_workers=2)))
    seen = []
    for shard in range(3):
        part = images_by_index(collect(loader(beton, shard_id=shard, num_shards=3)))
        seen += list(part)
        assert all(np.array_equal(image, whole[i]) for i, image in part.items())
    assert sorted(seen) == list(range(len(files)))


def test_centre_decode_for_validation_and_views_of_one_decode(files, beton):
    """LoaderSpec.decode overrides the .beton's own (a centre crop to evaluate training
    images): the same pixels every epoch. A second view starts from the same decoded
    batch."""
    centre = Decode("centre", fraction=0.875)
    views = {"images": (), "cropped": (CropFlip(padding=4, hflip=True),)}
    stream = loader(beton, decode=centre, shuffle=False, views=views)
    first, second = collect(stream), collect(stream)
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(first, second))
    images = images_by_index(first)
    near = distances(images, files, centre, 0)
    assert near.max() < CLOSE and near.mean() < CLOSE_ON_AVERAGE, near
    from pipelines.augment import crop_with_padding, flip_images

    b = first[0]
    replayed = flip_images(crop_with_padding(b["images"], b["cropped/crop_y"], b["cropped/crop_x"], 4),
                           b["cropped/hflip"])
    assert torch.equal(b["cropped"], replayed)


def test_images_stored_smaller_keep_the_windows_of_their_files(files, tmp_path):
    """Written at most 48 pixels a side, an image's window is still drawn on the file's
    own size, then scaled to the stored one: near read_image's window of the file (less
    near than at full size: the stored image lost detail, and the window is rounded to
    whole stored pixels), far from any other window."""
    path = convert_stream(StreamSource(files, RRC), tmp_path / "small.beton", max_side=48, num_workers=1)
    assert read_info(path)["max_side"] == 48
    images = images_by_index(collect(loader(path, shuffle=False)))
    near = distances(images, files, RRC, 0)
    assert near.max() < 3 * CLOSE and near.mean() < 3 * CLOSE_ON_AVERAGE, near
    assert np.median(distances(images, files, RRC, 1)) > 4 * CLOSE


def test_a_stream_source_is_written_to_a_temporary_beton(files):
    stream = loader(StreamSource(files, Decode("resize")), shuffle=False)
    temp = stream.path.parent
    images = images_by_index(collect(stream))
    near = distances(images, files, Decode("resize"), 0)
    assert near.max() < CLOSE and near.mean() < CLOSE_ON_AVERAGE, near
    del stream
    assert not temp.exists()
    with pytest.raises(ValueError, match="needs image_size"):
        make_loader(StreamSource(files, RRC), batch_size=8, device="cpu")


def test_kept_source_writes_once_and_refuses_other_files(files, tmp_path):
    source = StreamSource(files, RRC)
    path = kept_source(source, source, "train", tmp_path)
    assert path == str(tmp_path / "train-jpeg.beton") and not list(tmp_path.glob("partial-*"))
    written = os.stat(path).st_mtime_ns
    centre = StreamSource(files, Decode("centre"))
    assert kept_source(centre, centre, "train", tmp_path) == path and os.stat(path).st_mtime_ns == written
    assert Decode(**read_info(path)["decode"]) == Decode("centre")  # the source's decode, recorded
    fewer = StreamSource(list_folder(os.path.dirname(os.path.dirname(files.paths[0])), "train", val_fraction=0.5,
                                     seed=0), RRC)
    with pytest.raises(UserError, match="was not written from"):
        kept_source(fewer, fewer, "train", tmp_path)


def test_open_source_streams_a_folder(files):
    from gssl_fast.sections import DataConfig

    root = os.path.dirname(os.path.dirname(files.paths[0]))
    cfg = DataConfig(name="imagefolder", root=root, stream=True, crop="random_resized", val_fraction=0.2)
    source, dataset = open_source(cfg, "train")
    assert isinstance(source, StreamSource) and source is dataset and source.decode.kind == "random_resized"
    assert open_source(cfg, "val")[0].decode.kind == "centre"
    with pytest.raises(UserError, match="data.beton"):
        open_source(DataConfig(name="imagefolder", root=root, stream=True, beton="x.beton"), "train")


def test_an_unreadable_file_stops_the_conversion_or_is_left_out(tmp_path):
    images, labels = photos(10)
    write_image_folder(tmp_path / "data", images, labels, ext="jpg")
    bad = write_unreadable(tmp_path / "data" / "class_002" / "zz_bad.jpg", "truncated")
    files = list_folder(tmp_path / "data", "train")
    with pytest.raises(UserError, match="zz_bad.jpg"):
        convert_stream(StreamSource(files, RRC), tmp_path / "error.beton", num_workers=1)
    assert not (tmp_path / "error.beton").exists()
    path = convert_stream(StreamSource(files, RRC, on_corrupt="skip"), tmp_path / "skip.beton", num_workers=1)
    stream = loader(path, batch_size=4, shuffle=False)
    seen = torch.cat([b["indices"] for b in stream])
    assert sorted(seen.tolist()) == [i for i in range(len(files)) if files.paths[i] != str(bad)]
    assert [p for p, _ in stream.skipped] == [str(bad)]
