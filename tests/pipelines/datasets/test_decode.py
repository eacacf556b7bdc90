"""Bad and unusual image files, read by every backend: refused by name, skipped, or converted."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from gssl_fast.config import DataConfig
from pipelines.datasets import DATASETS
from pipelines.datasets.decode import decode_files, read_rgb, record_skipped, screen_files, to_rgb
from pipelines.datasets.folders import list_folder
from pipelines.datasets.testing import (
    CONVERTIBLE,
    UNREADABLE,
    save_image,
    write_convertible,
    write_image_folder,
    write_tinyimagenet,
    write_unreadable,
)
from pipelines.errors import UserError

BACKENDS = ("torch", "dali", "ffcv")
SIDE = 16


def good_tree(root, n=6):
    rng = np.random.default_rng(1)
    return write_image_folder(root, rng.integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8), np.arange(n) % 2)


def read_with(backend: str, root, tmp_path, **data) -> np.ndarray:
    """Every image of the folder ``root`` as one backend reads it: ``[N, S, S, 3]`` uint8
    in listing order (the torch loader's decode, DALI's own decoder, an FFCV .beton)."""
    if backend == "torch":
        cfg = DataConfig(name="imagefolder", root=str(root), image_size=SIDE, decode_cache=False, **data)
        return DATASETS["imagefolder"](cfg, "train").images
    pytest.importorskip({"dali": "nvidia.dali", "ffcv": "ffcv"}[backend])
    from pipelines import make_loader

    source = root
    if backend == "ffcv":
        from pipelines.ffcv import convert

        source = str(convert(root, tmp_path / "data.beton", image_size=SIDE, num_workers=1))
    loader = make_loader(source, backend=backend, batch_size=4, shuffle=False, image_size=SIDE, tasks=(),
                         augment=False, device="cpu", normalize=False)
    batches = list(loader)
    order = torch.cat([b["indices"] for b in batches]).argsort()
    return torch.cat([b["images"] for b in batches])[order].permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("kind", UNREADABLE)
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreadable_file_is_named_by_every_backend(tmp_path, backend, kind):
    root = good_tree(tmp_path / "tree")
    bad = write_unreadable(root / "class_001" / "zz_bad.jpg", kind)
    with pytest.raises(UserError) as err:
        read_with(backend, root, tmp_path)
    message = str(err.value)
    assert "\n" not in message and f"cannot read image {bad}: it " in message
    assert {"truncated": "truncated", "empty": "empty (0 bytes)", "not_image": "not an image"}[kind] in message
    assert 'data.on_corrupt = "skip"' in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_convertible_images_are_converted_by_every_backend(tmp_path, backend):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    root = good_tree(tmp_path / "tree", n=2)
    paths = {kind: write_convertible(root / "class_000" / f"odd_{kind}", kind, image) for kind in CONVERTIBLE}
    huge = np.broadcast_to(np.linspace(0, 255, 6000, dtype=np.float32)[None, :, None], (4000, 6000, 3))
    paths["huge"] = save_image(huge.astype(np.uint8), root / "class_000" / "odd_huge.jpg", "jpg")
    files = list_folder(root)
    got = dict(zip(files.paths, read_with(backend, root, tmp_path)))
    gray = np.repeat(image[..., :1], 3, axis=2)
    exact = {"gray": gray, "gray16": gray, "rgb16": image, "rgba": image}
    for kind, path in paths.items():
        with Image.open(path) as pil:
            reference = exact.get(kind)
            if reference is None:  # lossy or quantized files: PIL's own conversion and resize
                reference = np.asarray(pil.convert("RGB").resize((SIDE, SIDE), Image.BILINEAR))
        diff = np.abs(got[str(path)].astype(int) - reference.astype(int))
        # DALI resizes a large image with its own antialiasing filter; everything else is exact.
        assert diff.max() <= (3 if kind == "huge" and backend == "dali" else 0), (kind, diff.max())


def test_sixteen_bit_values_are_scaled_not_clipped():
    values = np.array([[0, 128, 129, 257 * 100 + 128, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    rgb = np.asarray(to_rgb(image))
    assert rgb[..., 0].tolist() == [[0, 0, 1, 100, 255]] and (rgb == rgb[..., :1]).all()


@pytest.mark.parametrize("kind", UNREADABLE)
def test_skip_leaves_unreadable_files_out_and_lists_them(tmp_path, kind):
    root = good_tree(tmp_path / "tree")
    bad = write_unreadable(root / "class_000" / "bad.jpg", kind)
    files = list_folder(root)
    dataset = decode_files(files, SIDE, on_corrupt="skip", workers=1)
    assert len(dataset) == len(files) - 1 and [p for p, _ in dataset.skipped] == [str(bad)]
    kept = [p for p in files.paths if p != str(bad)]
    assert np.array_equal(dataset.images, np.stack([read_rgb(p, SIDE) for p in kept]))
    screened = screen_files(files, workers=1)
    assert list(screened.paths) == kept and screened.skipped == dataset.skipped
    assert screened.labels.tolist() == dataset.labels.tolist()


def test_the_list_of_skipped_files_grows_and_keeps_each_once(tmp_path):
    path = tmp_path / "run" / "skipped_images.txt"
    odd = os.fsdecode(b"odd_\xff.jpg")  # a name that is no UTF-8: listed escaped, matched again
    first = {"train": [("a.jpg", "is empty"), (odd, "is truncated")], "val": []}
    assert record_skipped(path, first) == {"train": first["train"]}
    assert path.read_text().splitlines() == ["train\ta.jpg\tis empty", "train\todd_\\xff.jpg\tis truncated"]
    written = os.stat(path).st_mtime_ns
    assert record_skipped(path, first) == {} and os.stat(path).st_mtime_ns == written, "nothing new: not rewritten"
    later = {"train": [(odd, "is truncated"), ("b.jpg", "is empty")], "val": [("a.jpg", "is empty")]}
    assert record_skipped(path, later) == {"train": [("b.jpg", "is empty")], "val": [("a.jpg", "is empty")]}
    assert [line.split("\t")[:2] for line in path.read_text().splitlines()] == [
        ["train", "a.jpg"], ["train", "odd_\\xff.jpg"], ["train", "b.jpg"], ["val", "a.jpg"]]


def test_skipped_files_stay_out_of_dali_batches(tmp_path):
    pytest.importorskip("nvidia.dali")
    from pipelines import make_loader

    root = good_tree(tmp_path / "tree")
    write_unreadable(root / "class_000" / "bad.jpg", "truncated")
    files = screen_files(list_folder(root))
    loader = make_loader(files, backend="dali", batch_size=4, image_size=SIDE, tasks=(), device="cpu")
    assert sorted(torch.cat([b["indices"] for b in loader]).tolist()) == list(range(6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_listing_errors_name_the_file_in_every_backend(tmp_path, backend):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (8, SIDE, SIDE, 3), dtype=np.uint8)
    cases = {}
    cases["empty class"] = write_image_folder(tmp_path / "empty", images, np.arange(8) % 2)
    (cases["empty class"] / "class_002").mkdir()
    cases["not UTF-8"] = write_image_folder(tmp_path / "latin1", images, np.arange(8) % 2)
    os.rename(cases["not UTF-8"] / "class_000" / "000000.png",
              os.fsdecode(bytes(cases["not UTF-8"] / "class_000") + b"/caf\xe9.png"))
    tiny = write_tinyimagenet(tmp_path / "tiny", images[:4], np.arange(4) % 2, images[4:], np.arange(4) % 2)
    (tiny / "val" / "images" / "val_1.png").unlink()
    cases["missing val file"] = tiny
    expected = {"empty class": "class_002 holds no images", "not UTF-8": r"caf\xe9.png is not valid UTF-8",
                "missing val file": "names 'val_1.png', which is not in"}
    for case, root in cases.items():
        split = "val" if case == "missing val file" else "train"
        with pytest.raises(UserError) as err:
            if backend == "torch":
                DATASETS["imagefolder"](DataConfig(name="imagefolder", root=str(root), image_size=SIDE), split)
            elif backend == "dali":
                pytest.importorskip("nvidia.dali")
                from pipelines import make_loader

                make_loader(root, backend="dali", batch_size=4, split=split, device="cpu")
            else:
                pytest.importorskip("ffcv")
                from pipelines.ffcv import convert

                convert(root, tmp_path / "x.beton", split=split)
        assert expected[case] in str(err.value) and "\n" not in str(err.value), case


def test_a_dali_error_about_no_file_stays_itself(tmp_path):
    pytest.importorskip("nvidia.dali")
    from pipelines.dali.loader import unreadable_file

    bad = write_unreadable(tmp_path / "bad.jpg", "truncated")
    oom = RuntimeError("Critical error in pipeline: CUDA out of memory")
    assert unreadable_file(oom, [str(bad)]) is oom  # not blamed on a file, nothing decoded
    named = unreadable_file(RuntimeError(f"Failed to decode sample #3 : {bad}"), [])
    assert isinstance(named, UserError) and f"cannot read image {bad}: it is truncated" in str(named)
    good = save_image(np.zeros((8, 8, 3), dtype=np.uint8), tmp_path / "good.png")
    unnamed = unreadable_file(RuntimeError("nvImageCodec failure: '#4'"), [str(good), str(good)])
    assert isinstance(unnamed, UserError) and "\n" not in str(unnamed)
    assert f"one of the 2 images it was reading, from {good}" in str(unnamed)
