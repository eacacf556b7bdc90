"""The DALI backend's stream (pipelines.dali.stream) against the reference read of each
file (pipelines.stream.read_image): the same windows, pixels within DALI's resize of
PIL's, draws of (seed, epoch, index), disjoint shards, bad files found during the epoch."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from pipelines.dali import make_loader, open_source  # noqa: E402
from pipelines.dali.loader import PREFETCH  # noqa: E402
from pipelines.datasets import list_folder  # noqa: E402
from pipelines.datasets.testing import (  # noqa: E402
    CONVERTIBLE,
    photo_like,
    write_convertible,
    write_image_folder,
    write_unreadable,
)
from pipelines.errors import UserError  # noqa: E402
from pipelines.stream import Decode, StreamSource, decode_window, read_image  # noqa: E402
from pipelines.torch import make_loader as torch_loader  # noqa: E402
from tests.pipelines.loader_contract import check_shards, collect, replay  # noqa: E402
from tests.pipelines.test_dali_source import UNSAFE  # noqa: E402

# The same checks with "mixed" decoding and the graph on the GPU where CUDA exists.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
KINDS = [Decode("resize"), Decode("random_resized", scale=(0.1, 0.8)), Decode("centre", fraction=0.7)]
SIDE, SEED = 32, 5


def noise(n: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` images of uniform noise, sides 30..119 (a window one pixel off shows), 3 classes."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8) for h, w in rng.integers(30, 120, (n, 2))], \
        np.arange(n) % 3


@pytest.fixture(scope="module")
def noise_png(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise")
    write_image_folder(root, *noise(30), ext="png")
    return list_folder(root, "train")


@pytest.fixture(scope="module")
def photos_jpg(tmp_path_factory):
    """JPEG photos of varied sizes (40..299 a side: some windows shrink, some grow)."""
    root = tmp_path_factory.mktemp("photos")
    write_image_folder(root, photo_like(40, sizes=(40, 300)), np.arange(40) % 4, ext="jpg")
    return list_folder(root, "train")


def stream(files, decode, *, on_corrupt="error", **kwargs):
    """The DALI stream of ``files``: uint8, the views off unless asked for."""
    options = dict(batch_size=8, image_size=SIDE, normalize=False, device="cpu", seed=SEED, augment=False, tasks=())
    return make_loader(StreamSource(files, decode, on_corrupt), **{**options, **kwargs})


def reference(files, decode, indices, epoch: int, **kwargs) -> torch.Tensor:
    """``[B, 3, S, S]`` uint8: ``read_image`` of each of ``indices`` (the reference)."""
    return torch.stack([torch.from_numpy(read_image(files.paths[i], decode, SIDE, seed=SEED, epoch=epoch, index=i,
                                                    **kwargs).copy()).permute(2, 0, 1) for i in indices.tolist()])


def differences(loader, files, decode, epochs=(0,), **kwargs) -> torch.Tensor:
    """``[N, 3, S, S]`` float |DALI - reference| over ``epochs`` (the labels checked too)."""
    out = []
    for epoch in epochs:
        loader.set_epoch(epoch)
        for b in collect(loader):
            assert torch.equal(b["labels"], torch.from_numpy(files.labels[b["indices"].numpy()]))
            out.append((b["images"].int() - reference(files, decode, b["indices"], epoch, **kwargs).int()).abs())
    return torch.cat(out).float()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("decode", KINDS, ids=lambda d: d.kind)
def test_each_file_is_its_reference_window(noise_png, decode, device):
    """On noise, where a window one pixel off differs by tens of levels on average, every
    image is the reference's window, resized as PIL does up to DALI's rounding."""
    diff = differences(stream(noise_png, decode, device=device), noise_png, decode, epochs=(0, 1))
    assert len(diff) == 2 * len(noise_png)
    assert diff.mean() < 1 and diff.mean((1, 2, 3)).max() < 1.5, (diff.mean(), diff.mean((1, 2, 3)).max())
    if decode.random:  # the test would see a window one pixel off
        b = next(iter(stream(noise_png, decode)))
        off = torch.stack([one_pixel_off(noise_png.paths[i], decode, i) for i in b["indices"].tolist()])
        assert (b["images"].int() - off.int()).abs().float().mean() > 10


@pytest.mark.parametrize("device", DEVICES)
def test_a_bicubic_window_is_resized_as_pil_resizes_it(noise_png, device):
    """data.crop_interpolation = "bicubic" (torchvision's RandomResizedCrop(interpolation=3)):
    DALI's antialiased cubic filter within its rounding of PIL's bicubic, and far from the
    bilinear filter on noise."""
    cubic = Decode("random_resized", scale=(0.1, 0.8), interpolation="bicubic")
    diff = differences(stream(noise_png, cubic, device=device), noise_png, cubic)
    assert diff.mean() < 1 and diff.mean((1, 2, 3)).max() < 1.5, (diff.mean(), diff.mean((1, 2, 3)).max())
    linear = Decode("random_resized", scale=(0.1, 0.8), interpolation="bilinear")
    assert differences(stream(noise_png, cubic, device=device), noise_png, linear).mean() > 4


def one_pixel_off(path: str, decode: Decode, index: int) -> torch.Tensor:
    """``[3, S, S]`` uint8: the reference read of epoch 0 with its window moved a pixel
    (down or up; right or left when it is as tall as the image)."""
    with Image.open(path) as image:
        (width, height), (top, left, h, w) = image.size, decode.window(*image.size[::-1], SEED, 0, index)
        if h < height:
            top = top + 1 if top + h < height else top - 1
        else:
            left = left + 1 if left + w < width else left - 1
        return torch.from_numpy(decode_window(image, (top, left, h, w), SIDE, draft=False).copy()).permute(2, 0, 1)


def test_a_whole_png_is_resized_as_pil_resizes_it(tmp_path):
    """Decode "resize" on smooth PNGs: within 2 levels of PIL's antialiased bilinear
    (the in-memory path's pixels), and an image of the output size exactly."""
    images = photo_like(16, sizes=(24, 100))
    images[0] = photo_like(1, sizes=(SIDE, SIDE + 1), seed=1)[0]
    root = write_image_folder(tmp_path, images, np.zeros(16, dtype=np.int64), ext="png")
    files = list_folder(root, "train")
    loader = stream(files, Decode("resize"), shuffle=False)
    diff = differences(loader, files, Decode("resize"))
    assert diff.max() <= 2 and diff.mean() < 0.5, (diff.max(), diff.mean())
    assert diff[0].max() == 0  # SIDE x SIDE: copied


def test_a_jpeg_folder_of_varied_sizes(photos_jpg):
    """JPEGs of 40..299 pixels a side, random windows: DALI's decode of the window alone
    is PIL's full decode cropped (a few levels where the window's edge cuts a JPEG
    block); PIL's reduced-scale read (draft, the torch stream's) is close to it."""
    decode = Decode("random_resized")
    full = differences(stream(photos_jpg, decode), photos_jpg, decode, draft=False)
    assert full.max() <= 8 and full.mean() < 0.5, (full.max(), full.mean())
    drafted = differences(stream(photos_jpg, decode), photos_jpg, decode)
    assert drafted.mean() < 3, drafted.mean()


@pytest.mark.parametrize("kind", CONVERTIBLE)
def test_every_mode_pil_converts_is_read_as_pil_reads_it(tmp_path, kind):
    """Grayscale, palette, RGBA, 16-bit and CMYK files: RGB as ``read_image`` makes it."""
    path = write_convertible(tmp_path / "0" / "x", kind, photo_like(1, sizes=(SIDE, SIDE + 1))[0])
    files = list_folder(tmp_path, "train")
    assert files.paths == (str(path),)
    diff = differences(stream(files, Decode("resize")), files, Decode("resize"))
    assert diff.mean() < 1, (kind, diff.mean())


def test_epochs_differ_and_reproduce(photos_jpg):
    """The G-SSL view after a random window: a new loader gives the same epochs, epoch 1
    differs from epoch 0, and ``set_epoch`` replays an epoch, every key of every batch."""
    options = dict(augment=True, tasks=("rotation", "flip", "perm"), crop_padding=0)
    decode = Decode("random_resized")
    loader = stream(photos_jpg, decode, **options)
    first, second = collect(loader), collect(loader)
    again = stream(photos_jpg, decode, **options)
    for a, b in zip(first, collect(again)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(first[0]["indices"], second[0]["indices"])
    assert not torch.equal(first[0]["images"], second[0]["images"])
    loader.set_epoch(1)
    for a, b in zip(second, collect(loader)):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_views_run_on_the_decoded_window_with_their_draws(noise_png):
    """The batch has the torch stream's keys, and each view is its torch reference
    applied to the decoded window with the parameters the batch reports."""
    options = dict(augment=True, tasks=("rotation", "flip", "perm"), crop_padding=2)
    decode = Decode("random_resized", scale=(0.2, 1.0))
    loader = stream(noise_png, decode, **options)
    torch_batch = next(iter(torch_loader(StreamSource(noise_png, decode), num_workers=0, batch_size=8,
                                         image_size=SIDE, normalize=False, device="cpu", seed=SEED, **options)))
    (name, view), = loader.spec.views
    for b in collect(loader):
        assert b.keys() == torch_batch.keys()
        want = replay(view, reference(noise_png, decode, b["indices"], 0), b, name)
        diff = (b["images"].int() - want.int()).abs().float()
        assert diff.mean() < 1, diff.mean()


@pytest.mark.parametrize("num_shards", [2, 3])
def test_shards_read_their_positions_alone(noise_png, num_shards):
    decode = Decode("random_resized")

    def shard(s, n):
        return stream(noise_png, decode, shard_id=s, num_shards=n, drop_last=False)

    check_shards(shard, len(noise_png), num_shards=num_shards)
    for s in range(num_shards):
        loader = shard(s, num_shards)
        seen = torch.cat([b["indices"] for b in loader])
        assert torch.equal(seen, loader.spec.epoch_order(len(noise_png), 0))
        assert (loader.screen.sizes[seen.numpy()] > 0).all()  # screened: this shard's files


def folder_with(tmp_path, bad: dict[str, bytes], n: int = 40):
    """``n`` good JPEGs in 2 classes and the ``bad`` files (name -> bytes) last in class 1."""
    write_image_folder(tmp_path, photo_like(n), np.arange(n) % 2, ext="jpg")
    for name, data in bad.items():
        (tmp_path / "class_001" / name).write_bytes(data)
    return list_folder(tmp_path, "train")


def test_a_bad_file_is_named_during_the_epoch(tmp_path):
    """Nothing is read before the epoch; the batches before the bad file's come out (but
    those the pipeline reads ahead), then the one-line error naming it."""
    write_image_folder(tmp_path, photo_like(40), np.arange(40) % 2, ext="jpg")
    bad = write_unreadable(tmp_path / "class_001" / "zz_bad.jpg", "truncated")
    files = list_folder(tmp_path, "train")
    loader = stream(files, Decode("random_resized"), shuffle=False, batch_size=4)
    assert (loader.screen.sizes < 0).all()  # no pass over the files
    got = []
    with pytest.raises(UserError, match=r"^cannot read image .*zz_bad\.jpg: it is truncated") as error:
        for b in loader:
            got.append(b)
    assert len(got) >= files.paths.index(str(bad)) // 4 - PREFETCH and "\n" not in str(error.value)


def test_a_bad_file_is_left_out_and_named_once(tmp_path, capsys):
    files = folder_with(tmp_path, {"zz_bad.jpg": UNSAFE["jpeg_truncated"]()})
    bad = files.paths.index(str(tmp_path / "class_001" / "zz_bad.jpg"))
    loader = stream(files, Decode("random_resized"), on_corrupt="skip")
    for _ in range(2):
        seen = torch.cat([b["indices"] for b in loader]).tolist()
        assert sorted(seen) == [i for i in range(len(files)) if i != bad]
    assert [p for p, _ in loader.skipped] == [files.paths[bad]]
    assert capsys.readouterr().err.count("left out unreadable image") == 1


def test_no_file_that_crashed_dali_reaches_it(tmp_path):
    """Every kind of file DALI's CPU decoder crashed or failed on, shuffled among 60 good
    JPEGs in batches of 64 (where it crashed): each left out and named, the rest decoded."""
    files = folder_with(tmp_path, {f"bad_{kind}.jpg": make() for kind, make in UNSAFE.items()}, n=60)
    loader = stream(files, Decode("random_resized"), on_corrupt="skip", batch_size=64)
    seen = torch.cat([b["indices"] for b in loader])
    assert len(seen) == 60 and len(loader.skipped) == len(UNSAFE)
    assert all("/bad_" in p for p, _ in loader.skipped)
    with pytest.raises(UserError, match="bad_"):
        list(stream(files, Decode("random_resized"), batch_size=64))


def test_open_source_streams_a_folder_dataset(tmp_path):
    write_image_folder(tmp_path, photo_like(8), np.arange(8) % 2, ext="jpg")
    from gssl_fast.sections import DataConfig  # a recipe's [data] section, as the trainer passes it

    cfg = DataConfig(name="imagefolder", root=str(tmp_path), val_fraction=0.25, seed=0, crop="random_resized",
                     crop_scale=(0.3, 1.0), crop_ratio=(0.75, 1.33), val_crop_fraction=0.875, on_corrupt="skip",
                     stream=True)
    train, same = open_source(cfg, "train")
    val, _ = open_source(cfg, "val")
    assert train is same and isinstance(train, StreamSource) and train.on_corrupt == "skip"
    assert train.decode.kind == "random_resized" and val.decode.kind == "centre" and len(train) + len(val) == 8
    batches = collect(make_loader(train, batch_size=4, image_size=16, device="cpu", crop_padding=0))
    assert sum(len(b["indices"]) for b in batches) == len(train)


def test_a_stream_needs_an_image_size(noise_png):
    with pytest.raises(ValueError, match="image_size"):
        make_loader(StreamSource(noise_png), batch_size=4, device="cpu")
