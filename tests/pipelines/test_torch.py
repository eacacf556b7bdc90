import numpy as np
import pytest
import torch

from pipelines.torch import make_loader
from tests.pipelines.loader_contract import (
    check_batch_format,
    check_label_balance,
    check_pixel_parity,
    check_shards,
    collect,
)


def arrays(n=300, side=32, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8), rng.integers(0, classes, n)


@pytest.mark.parametrize("side", [32, 64])
@pytest.mark.parametrize("flip_axis", ["horizontal", "vertical"])
def test_pixel_parity_with_reference(side, flip_axis):
    images, labels = arrays(200, side)
    loader = make_loader((images, labels), batch_size=64, augment=False, normalize=False, seed=4,
                         flip_axis=flip_axis, device="cpu")
    batches = collect(loader)
    assert len(batches) == len(loader) == 4
    check_batch_format(batches[0], batch_size=64, side=side, normalized=False)
    assert check_pixel_parity(batches, images, labels, flip_axis=flip_axis) == 200


def test_pixel_parity_from_png_folder(tmp_path):
    from pipelines.datasets.testing import write_image_folder

    images, labels = arrays(40, 32, classes=4)
    write_image_folder(tmp_path / "folder", images, labels, ext="png")
    loader = make_loader(tmp_path / "folder", batch_size=16, augment=False, normalize=False, device="cpu")
    batches = collect(loader)
    ds = loader.dataset
    assert check_pixel_parity(batches, ds.images, ds.labels) == 40
    # ImageFolder order is by class folder then file name; every source image is present.
    assert sorted(map(bytes, ds.images.reshape(40, -1))) == sorted(map(bytes, images.reshape(40, -1)))


def test_normalized_training_batches_and_label_balance():
    images, labels = arrays(1200)
    loader = make_loader((images, labels), batch_size=100, device="cpu", drop_last=True)
    batches = collect(loader)
    check_batch_format(batches[0], batch_size=100, side=32, normalized=True)
    check_label_balance(batches)


def test_shards_disjoint_and_cover():
    images, labels = arrays(101)
    check_shards(lambda s, n: make_loader((images, labels), batch_size=16, shard_id=s, num_shards=n, device="cpu"), 101)


def test_epochs_differ_and_seed_reproduces():
    images, labels = arrays(64)
    a = make_loader((images, labels), batch_size=32, seed=1, device="cpu")
    e0, e1 = collect(a), collect(a)
    assert not torch.equal(e0[0]["indices"], e1[0]["indices"])
    b = make_loader((images, labels), batch_size=32, seed=1, device="cpu")
    b.set_epoch(1)
    assert all(torch.equal(x, y) for x, y in zip(e1[0].values(), collect(b)[0].values()))


def test_last_partial_batch_and_drop_last():
    images, labels = arrays(70)
    keep = collect(make_loader((images, labels), batch_size=32, device="cpu"))
    assert [len(b["labels"]) for b in keep] == [32, 32, 6]
    drop = make_loader((images, labels), batch_size=32, device="cpu", drop_last=True)
    assert len(drop) == 2 and [len(b["labels"]) for b in collect(drop)] == [32, 32]


def test_subset_of_tasks_keeps_identity_params():
    images, labels = arrays(64)
    b = collect(make_loader((images, labels), batch_size=64, tasks=("rotation",), device="cpu"))[0]
    assert b["flip"].eq(0).all() and b["perm"].eq(0).all() and "target_flip" not in b


def test_bad_source_and_shape():
    with pytest.raises(ValueError, match="uint8"):
        make_loader((np.zeros((4, 8, 8, 3), np.float32), np.zeros(4, int)), batch_size=2)
    with pytest.raises(TypeError, match="source"):
        make_loader(42, batch_size=2)


def test_hflip_off_keeps_crop_and_transform():
    from pipelines.augment import crop_with_padding, draw_crop_flip
    from pipelines.sampling import generator
    from pipelines.localizable import PARAM_KEYS, apply_localizable

    images, labels = arrays(64, 16)
    b = collect(make_loader((images, labels), batch_size=64, normalize=False, hflip=False, seed=5, device="cpu"))[0]
    gen = generator(5, "augment", 0, 0)
    aug = draw_crop_flip(64, padding=4, generator=gen)
    src = torch.from_numpy(images).permute(0, 3, 1, 2)[b["indices"]]
    expect = apply_localizable(crop_with_padding(src, aug["crop_y"], aug["crop_x"], 4), **{k: b[k] for k in PARAM_KEYS})
    assert torch.equal(b["images"], expect)
