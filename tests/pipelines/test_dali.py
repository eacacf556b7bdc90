from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from pipelines.augment import crop_with_padding, flip_images  # noqa: E402
from pipelines.dali import make_loader  # noqa: E402
from pipelines.datasets.decode import decode_files  # noqa: E402
from pipelines.datasets.folders import list_folder  # noqa: E402
from pipelines.datasets.testing import write_image_folder, write_tinyimagenet  # noqa: E402
from pipelines.localizable import PARAM_KEYS, apply_localizable  # noqa: E402
from tests.pipelines.loader_contract import (  # noqa: E402
    arrays,
    check_pixel_parity,
    check_shards,
    collect,
)

# The same checks run on the GPU pipeline ("mixed" decoding, GPU operators) where CUDA exists.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def decoded(root, split="train"):
    """The files of ``root`` decoded by PIL, in the order of the file list (= dataset indices)."""
    files = list_folder(root, split)
    with Image.open(files.paths[0]) as first:
        return decode_files(files, first.size[0], workers=1)


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
    """The order of docs/method.md section 1 on the source images with the loader's own draws: crop, flip, transform."""
    x = crop_with_padding(src[batch["indices"]], batch["crop_y"], batch["crop_x"], padding)
    x = flip_images(x, batch["hflip"])
    return apply_localizable(x, **{k: batch[k] for k in PARAM_KEYS}, flip_axis=flip_axis)


def test_augmented_folder_without_tasks(tmp_path):
    images, labels = arrays(20, 32, classes=2)
    root = write_image_folder(tmp_path / "folder", images, labels)
    loader = make_loader(root, batch_size=20, tasks=(), normalize=False, crop_padding=2, device="cpu")
    b = collect(loader)[0]
    src = torch.from_numpy(decoded(root).images).permute(0, 3, 1, 2)
    assert b["quadrant"].eq(0).all() and "target_rotation" not in b
    assert torch.equal(b["images"], augmented_reference(b, src, 2))


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
    root = write_image_folder(tmp_path / "folder", images[:21], np.arange(21) % 3)
    files = collect(make_loader(root, batch_size=8, device="cpu", shuffle=False))
    assert [len(b["labels"]) for b in files] == [8, 8, 5]
    assert torch.cat([b["indices"] for b in files]).tolist() == list(range(21))  # no repeated padding
    drop = make_loader(root, batch_size=8, device="cpu", drop_last=True, shard_id=1, num_shards=2)
    assert len(drop) == 1 and [len(b["labels"]) for b in collect(drop)] == [8]


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
