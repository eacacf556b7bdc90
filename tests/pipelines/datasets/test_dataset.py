import dataclasses

import numpy as np
import pytest
from PIL import Image

from gssl_fast.config import DataConfig
from pipelines.datasets import (
    CIFAR_MEAN,
    CIFAR_STD,
    DATASETS,
    ArrayDataset,
    load_dataset,
    longtail_counts,
    make_shapes,
    resize_images,
)
from pipelines.datasets.testing import write_cifar10
from pipelines.errors import UserError


def _dataset(n=6, k=3, size=4):
    images = np.arange(n * size * size * 3, dtype=np.uint8).reshape(n, size, size, 3)
    return ArrayDataset(images, np.arange(n) % k, tuple("abc"[:k]), CIFAR_MEAN, CIFAR_STD)


def test_array_dataset_basics():
    data = _dataset()
    assert len(data) == 6 and data.num_classes == 3
    assert data.class_counts().tolist() == [2, 2, 2] and data.class_counts().dtype == np.int64
    sub = data.subset([5, 0])
    assert sub.labels.tolist() == [2, 0] and sub.classes == data.classes
    np.testing.assert_array_equal(sub.images[0], data.images[5])
    assert data.subset(data.labels == 1).labels.tolist() == [1, 1]
    assert data.subset([]).class_counts().tolist() == [0, 0, 0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.labels = data.labels


def test_array_dataset_normalizes_layout():
    images = np.zeros((3, 3, 5, 5), dtype=np.uint8).transpose(0, 2, 3, 1)  # not C-contiguous
    data = ArrayDataset(images, np.array([0, 1, 0], dtype=np.int32), ["x", "y"], (0.5,) * 3, (0.25,) * 3)
    assert data.images.flags.c_contiguous and data.labels.dtype == np.int64
    assert data.classes == ("x", "y") and data.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("images, labels, match", [
    (np.zeros((2, 4, 4, 3), np.float32), [0, 0], "uint8"),
    (np.zeros((2, 4, 4), np.uint8), [0, 0], "uint8"),
    (np.zeros((2, 4, 4, 3), np.uint8), [0], "labels"),
    (np.zeros((2, 4, 4, 3), np.uint8), [0, 2], "0..1"),
    (np.zeros((2, 4, 4, 3), np.uint8), [0.0, 1.0], "integers"),
])
def test_array_dataset_rejects(images, labels, match):
    with pytest.raises(ValueError, match=match):
        ArrayDataset(images, np.asarray(labels), ("a", "b"), CIFAR_MEAN, CIFAR_STD)


def test_registry_names():
    assert set(DATASETS) == {"shapes", "cifar10", "cifar100", "tinyimagenet", "imagefolder"}


def test_unknown_dataset_lists_names():
    with pytest.raises(UserError, match="data.name") as err:
        load_dataset(DataConfig(name="mnist"), "train")
    assert all(name in str(err.value) for name in DATASETS)


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        load_dataset(DataConfig(), "test")


def test_longtail_applies_to_train_only():
    cfg = DataConfig(train_size=500, val_size=100, longtail="exp", imbalance_ratio=0.1)
    train, val = load_dataset(cfg, "train"), load_dataset(cfg, "val")
    assert train.class_counts().tolist() == longtail_counts(50, 10, "exp", 0.1)
    assert val.class_counts().tolist() == [10] * 10


def test_bad_longtail_is_a_user_error():
    with pytest.raises(UserError, match="data.longtail"):
        load_dataset(DataConfig(train_size=20, longtail="linear"), "train")
    with pytest.raises(UserError, match="data.imbalance_ratio"):
        load_dataset(DataConfig(train_size=20, longtail="step", imbalance_ratio=2.0), "train")


def test_shapes_generated_at_size():
    data = load_dataset(DataConfig(train_size=10, image_size=64), "train")
    np.testing.assert_array_equal(data.images, make_shapes(10, image_size=64).images)


def test_cifar_resized_to_image_size(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    root = write_cifar10(tmp_path, images, np.arange(10))
    data = load_dataset(DataConfig(name="cifar10", root=str(root), image_size=48), "val")
    assert data.images.shape == (10, 48, 48, 3)
    expected = np.asarray(Image.fromarray(images[3]).resize((48, 48), Image.BILINEAR))
    np.testing.assert_array_equal(data.images[3], expected)


def test_resize_is_antialiased():
    checker = np.indices((32, 32)).sum(0) % 2 * 255
    image = np.repeat(checker[None, :, :, None], 3, axis=3).astype(np.uint8)
    small = resize_images(image, 8)
    # A 4x shrink averages the checkerboard to grey; plain bilinear sampling would alias.
    assert small.shape == (1, 8, 8, 3) and np.all(np.abs(small.astype(int) - 128) <= 2)
    flat = np.full((2, 10, 10, 3), 90, dtype=np.uint8)
    assert np.all(resize_images(flat, 25) == 90)


def _rows(dataset) -> list[bytes]:
    return sorted(image.tobytes() + bytes([label]) for image, label in zip(dataset.images, dataset.labels))


@pytest.mark.parametrize("longtail", ["none", "exp"])
def test_the_calibration_share_is_held_out_of_the_train_split(longtail):
    cfg = DataConfig(train_size=500, val_size=50, longtail=longtail, imbalance_ratio=0.1)
    whole = load_dataset(cfg, "train")
    held_cfg = dataclasses.replace(cfg, calibration_fraction=0.2)
    train, held = load_dataset(held_cfg, "train"), load_dataset(held_cfg, "calibration")
    assert len(held) and sorted(_rows(train) + _rows(held)) == _rows(whole)
    counts = whole.class_counts()
    expected = [min(n - 1, max(1, round(0.2 * n))) for n in counts]
    assert held.class_counts().tolist() == expected
    assert _rows(load_dataset(held_cfg, "val")) == _rows(load_dataset(cfg, "val")), "the val split is untouched"
    again = load_dataset(held_cfg, "calibration")
    assert np.array_equal(again.images, held.images), "the share is drawn with data.seed: the same every time"


def test_the_calibration_split_needs_a_share():
    with pytest.raises(UserError, match="data.calibration_fraction"):
        load_dataset(DataConfig(train_size=20), "calibration")


def test_a_folder_lists_the_calibration_share_as_it_decodes_it(tmp_path):
    from pipelines.datasets import list_files
    from pipelines.datasets.testing import write_image_folder

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    root = write_image_folder(tmp_path / "tree", list(images), np.arange(30) % 3)
    cfg = DataConfig(name="imagefolder", root=str(root), image_size=8, val_fraction=0.2, calibration_fraction=0.25,
                     decode_cache=False)
    for split in ("train", "calibration"):
        files, decoded = list_files(cfg, split), load_dataset(cfg, split)
        assert files.labels.tolist() == decoded.labels.tolist()
        assert np.array_equal(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files.paths]), decoded.images)
    train, held = list_files(cfg, "train").paths, list_files(cfg, "calibration").paths
    whole = list_files(dataclasses.replace(cfg, calibration_fraction=0.0), "train").paths
    assert not set(train) & set(held) and sorted(train + held) == sorted(whole)
