import numpy as np
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from pipelines.datasets.folders import decode_files, list_folder  # noqa: E402
from pipelines.datasets.testing import write_image_folder, write_tinyimagenet  # noqa: E402
from pipelines.localizable import PARAM_KEYS, apply_localizable  # noqa: E402
from pipelines.augment import crop_with_padding, flip_images, normalize  # noqa: E402
from pipelines.dali import make_loader  # noqa: E402
from tests.pipelines.loader_contract import (  # noqa: E402
    check_batch_format,
    check_label_balance,
    check_pixel_parity,
    check_shards,
    collect,
)


# The same checks run on the GPU pipeline ("mixed" decoding, GPU operators) where CUDA exists.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def arrays(n=300, side=32, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8), rng.integers(0, classes, n)


def decoded(root, split="train"):
    """The files of ``root`` decoded by PIL, in the order of the file list (= dataset indices)."""
    files = list_folder(root, split)
    with Image.open(files.paths[0]) as first:
        return decode_files(files, first.size[0], workers=1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("side", [32, 64])
@pytest.mark.parametrize("flip_axis", ["horizontal", "vertical"])
def test_pixel_parity_from_arrays(side, flip_axis, device):
    images, labels = arrays(200, side)
    loader = make_loader((images, labels), batch_size=64, augment=False, normalize=False, seed=4,
                         flip_axis=flip_axis, device=device)
    batches = collect(loader)
    assert len(batches) == len(loader) == 4
    check_batch_format(batches[0], batch_size=64, side=side, normalized=False)
    assert check_pixel_parity(batches, images, labels, flip_axis=flip_axis) == 200
    # Every (quadrant, flip, rotation) combination occurred, so each was checked.
    combos = torch.cat([8 * b["quadrant"] + 4 * b["flip"] + b["rotation"] for b in batches])
    assert len(set(combos.tolist())) == 32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("side", [32, 64])
def test_pixel_parity_from_png_folder(tmp_path, side, device):
    images, labels = arrays(60, side, classes=4)
    root = write_image_folder(tmp_path / "folder", images, labels, ext="png")
    loader = make_loader(root, batch_size=16, augment=False, normalize=False, device=device)
    batches = collect(loader)
    assert len(batches) == len(loader) == 4 and len(batches[-1]["labels"]) == 12
    ds = decoded(root)
    assert check_pixel_parity(batches, ds.images, ds.labels) == 60
    assert sorted(torch.cat([b["indices"] for b in batches]).tolist()) == list(range(60))


@pytest.mark.parametrize("split", ["train", "val"])
def test_pixel_parity_from_tinyimagenet(tmp_path, split):
    train, train_labels = arrays(24, 64, classes=3, seed=1)
    val, val_labels = arrays(10, 64, classes=3, seed=2)
    root = write_tinyimagenet(tmp_path / "tiny", train, train_labels, val, val_labels)
    loader = make_loader(root, split=split, batch_size=8, augment=False, normalize=False, flip_axis="vertical",
                         device="cpu")
    ds = decoded(root, split)
    assert check_pixel_parity(collect(loader), ds.images, ds.labels, flip_axis="vertical") == len(ds)
    if split == "val":  # labels come from val_annotations.txt
        assert sorted(ds.labels.tolist()) == sorted(val_labels.tolist())


@pytest.mark.parametrize("split", ["train", "val"])
def test_tinyimagenet_from_the_folder_it_was_unzipped_in(tmp_path, split):
    """A root holding tiny-imagenet-200/ (as the torch datasets accept it) is read as
    Tiny-ImageNet, not as an ImageFolder of one class: the wnids and both splits."""
    train, train_labels = arrays(24, 64, classes=3, seed=1)
    val, val_labels = arrays(10, 64, classes=3, seed=2)
    wnids = ("n0300", "n0100", "n0200")  # wnids.txt order, not sorted
    write_tinyimagenet(tmp_path / "tiny-imagenet-200", train, train_labels, val, val_labels, wnids=wnids)
    loader = make_loader(tmp_path, split=split, batch_size=8, augment=False, normalize=False, device="cpu")
    assert loader.dataset.classes == wnids and len(loader.dataset) == (10 if split == "val" else 24)
    if split == "val":  # val_annotations.txt order = the order written
        images, labels = val, val_labels
    else:  # train/<wnid>/images/, class by class in wnids.txt order, files in written order
        order = np.argsort(train_labels, kind="stable")
        images, labels = train[order], train_labels[order]
    assert check_pixel_parity(collect(loader), images, labels) == len(labels)


def test_folder_of_mixed_sizes_is_resized_like_pil(tmp_path):
    images, labels = arrays(12, 48, classes=2)
    smooth = [np.asarray(Image.fromarray(im).resize((12, 12)).resize((48 if i % 2 else 40,) * 2)) for i, im in
              enumerate(images)]
    root = write_image_folder(tmp_path / "folder", smooth, labels)
    b = collect(make_loader(root, batch_size=12, image_size=32, tasks=(), augment=False, normalize=False,
                            shuffle=False, device="cpu"))[0]
    pil = torch.from_numpy(decode_files(list_folder(root), 32, workers=1).images).permute(0, 3, 1, 2)
    diff = (b["images"].int() - pil.int()).abs()
    assert b["images"].shape == (12, 3, 32, 32) and diff.float().mean() < 1 and diff.max() <= 8


def augmented_reference(batch, src, padding, flip_axis="horizontal"):
    """The SPEC order on the source images with the loader's own draws: crop, flip, transform."""
    x = crop_with_padding(src[batch["indices"]], batch["crop_y"], batch["crop_x"], padding)
    x = flip_images(x, batch["hflip"])
    return apply_localizable(x, **{k: batch[k] for k in PARAM_KEYS}, flip_axis=flip_axis)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flip_axis", ["horizontal", "vertical"])
def test_augmented_images_equal_crop_flip_transform_of_their_source(flip_axis, device):
    images, labels = arrays(256, 32)
    loader = make_loader((images, labels), batch_size=128, normalize=False, crop_padding=4, seed=2,
                         flip_axis=flip_axis, device=device)
    batches = collect(loader)
    src = torch.from_numpy(images).permute(0, 3, 1, 2)
    for b in batches:
        assert torch.equal(b["images"], augmented_reference(b, src, 4, flip_axis))
    draws = {k: torch.cat([b[k] for b in batches]) for k in ("crop_y", "crop_x", "hflip")}
    assert set(draws["crop_y"].tolist()) == set(draws["crop_x"].tolist()) == set(range(9))
    assert set(draws["hflip"].tolist()) == {0, 1}


def test_augmented_folder_without_tasks(tmp_path):
    images, labels = arrays(20, 32, classes=2)
    root = write_image_folder(tmp_path / "folder", images, labels)
    loader = make_loader(root, batch_size=20, tasks=(), normalize=False, crop_padding=2, device="cpu")
    b = collect(loader)[0]
    src = torch.from_numpy(decoded(root).images).permute(0, 3, 1, 2)
    assert b["quadrant"].eq(0).all() and "target_rotation" not in b
    assert torch.equal(b["images"], augmented_reference(b, src, 2))


@pytest.mark.parametrize("device", DEVICES)
def test_normalized_output_equals_normalized_uint8(device):
    images, labels = arrays(96, 32)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    kw = dict(batch_size=48, seed=7, mean=mean, std=std, device=device)
    raw = collect(make_loader((images, labels), normalize=False, **kw))
    norm = collect(make_loader((images, labels), normalize=True, **kw))
    for r, n in zip(raw, norm):
        check_batch_format(n, batch_size=48, side=32, normalized=True)
        assert all(torch.equal(r[k], n[k]) for k in ("indices", *PARAM_KEYS, "crop_y", "hflip"))
        torch.testing.assert_close(n["images"], normalize(r["images"], mean, std), atol=1e-5, rtol=1e-5)


def test_pretext_labels_in_range_and_balanced():
    images, labels = arrays(1200)
    loader = make_loader((images, labels), batch_size=100, drop_last=True, device="cpu")
    batches = collect(loader)
    check_batch_format(batches[0], batch_size=100, side=32, normalized=True)
    check_label_balance(batches)


def test_shards_disjoint_and_cover_from_arrays():
    images, labels = arrays(101)
    check_shards(lambda s, n: make_loader((images, labels), batch_size=16, shard_id=s, num_shards=n,
                                          device="cpu"), 101)


@pytest.mark.parametrize("num_shards", [2, 3])
def test_shards_disjoint_and_cover_from_files(tmp_path, num_shards):
    images, labels = arrays(37, 32, classes=3)
    root = write_image_folder(tmp_path / "folder", images, labels)
    check_shards(lambda s, n: make_loader(root, batch_size=8, shard_id=s, num_shards=n, device="cpu"),
                 37, num_shards=num_shards)


def test_last_partial_batch_and_drop_last(tmp_path):
    images, labels = arrays(70)
    keep = collect(make_loader((images, labels), batch_size=32, device="cpu"))
    assert [len(b["labels"]) for b in keep] == [32, 32, 6]
    drop = make_loader((images, labels), batch_size=32, device="cpu", drop_last=True)
    assert len(drop) == 2 and [len(b["labels"]) for b in collect(drop)] == [32, 32]
    root = write_image_folder(tmp_path / "folder", images[:21], labels[:21])
    files = collect(make_loader(root, batch_size=8, device="cpu", shuffle=False))
    assert [len(b["labels"]) for b in files] == [8, 8, 5]
    assert torch.cat([b["indices"] for b in files]).tolist() == list(range(21))  # no repeated padding
    drop = make_loader(root, batch_size=8, device="cpu", drop_last=True, shard_id=1, num_shards=2)
    assert len(drop) == 1 and [len(b["labels"]) for b in collect(drop)] == [8]


def test_epochs_differ_and_set_epoch_reproduces():
    images, labels = arrays(64)
    a = make_loader((images, labels), batch_size=32, seed=1, device="cpu")
    e0, e1 = collect(a), collect(a)
    assert not torch.equal(e0[0]["indices"], e1[0]["indices"])
    assert not torch.equal(e0[0]["quadrant"], e1[0]["quadrant"])
    b = make_loader((images, labels), batch_size=32, seed=1, device="cpu")
    b.set_epoch(1)
    assert all(torch.equal(e1[0][k], v) for k, v in collect(b)[0].items())


def test_subset_of_tasks_and_evaluation_loader():
    images, labels = arrays(64)
    b = collect(make_loader((images, labels), batch_size=64, tasks=("rotation",), device="cpu"))[0]
    assert b["flip"].eq(0).all() and b["perm"].eq(0).all() and "target_flip" not in b
    assert b["rotation"].unique().numel() == 4
    val = collect(make_loader((images, labels), batch_size=64, tasks=(), augment=False, shuffle=False,
                              normalize=False, device="cpu"))[0]
    assert torch.equal(val["images"], torch.from_numpy(images).permute(0, 3, 1, 2))
    assert val["indices"].tolist() == list(range(64)) and "crop_y" not in val


def test_bad_arguments():
    images, labels = arrays(8, 31)
    with pytest.raises(ValueError, match="even side"):
        make_loader((images, labels), batch_size=4)
    with pytest.raises(ValueError, match="flip_axis"):
        make_loader((images, labels), batch_size=4, tasks=(), flip_axis="diagonal")
    with pytest.raises(ValueError, match="shard_id"):
        make_loader((images, labels), batch_size=4, tasks=(), shard_id=2, num_shards=2)


def test_readme_example(tmp_path):
    """The README's example, run as written: pipelines.dali in a plain PyTorch loop, no
    gssl_fast.train, on whatever device this machine has."""
    images, labels = arrays(64, 32, classes=4)
    root = write_image_folder(tmp_path / "photos", images, labels)  # any ImageFolder tree
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## DALI pipelines in your own code"):]
    begin = section.index("```python\n") + len("```python\n")
    code = section[begin:section.index("\n```", begin)]
    assert 'make_loader("data/my_images"' in code
    scope = {}
    exec(code.replace('"data/my_images"', repr(str(root))), scope)  # noqa: S102  (our own README)
    loader, loss = scope["loader"], scope["loss"]
    assert len(loader) == 2 and loader.epoch == 2 and torch.isfinite(loss)


def test_hflip_off_keeps_crop_and_transform_only():
    images, labels = arrays(128, 32)
    loader = make_loader((images, labels), batch_size=64, normalize=False, hflip=False, seed=3, device="cpu")
    src = torch.from_numpy(images).permute(0, 3, 1, 2)
    for b in collect(loader):
        assert b["hflip"].eq(0).all()
        assert torch.equal(b["images"], augmented_reference(b, src, 4))
