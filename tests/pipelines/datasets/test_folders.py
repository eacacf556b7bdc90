import numpy as np
import pytest
from PIL import Image

from gssl_fast.config import DataConfig
from pipelines.datasets import DATASETS, IMAGENET_MEAN, IMAGENET_STD, load_dataset
from pipelines.datasets.decode import decode_files
from pipelines.datasets.folders import (
    FileList,
    list_folder,
    list_image_folder,
    list_tinyimagenet,
)
from pipelines.datasets.testing import (
    save_image,
    write_image_folder,
    write_tinyimagenet,
)
from pipelines.errors import UserError

WNIDS = ("n0300", "n0100", "n0200")  # deliberately not sorted: wnids.txt order rules


def _images(n, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def tiny(tmp_path):
    train, train_labels = _images(6), np.array([0, 0, 1, 1, 2, 2])
    val, val_labels = _images(4, seed=1), np.array([2, 0, 1, 2])
    root = write_tinyimagenet(tmp_path / "tiny-imagenet-200", train, train_labels, val, val_labels, wnids=WNIDS)
    return root, (train, train_labels), (val, val_labels)


def test_tinyimagenet_listing(tiny):
    root, (_, train_labels), (_, val_labels) = tiny
    train = list_tinyimagenet(root, "train")
    assert train.classes == WNIDS
    np.testing.assert_array_equal(train.labels, train_labels)
    assert train.paths[0].endswith("train/n0300/images/n0300_0000.png")
    val = list_tinyimagenet(root, "val")
    assert val.classes == WNIDS
    np.testing.assert_array_equal(val.labels, val_labels)  # from val_annotations.txt
    assert [p.rsplit("/", 1)[1] for p in val.paths] == [f"val_{i}.png" for i in range(4)]


def test_tinyimagenet_pixels(tiny):
    root, (train_images, _), (val_images, _) = tiny
    cfg = DataConfig(name="tinyimagenet", root=str(root), image_size=64)
    train, val = DATASETS["tinyimagenet"](cfg, "train"), DATASETS["tinyimagenet"](cfg, "val")
    np.testing.assert_array_equal(train.images, train_images)
    np.testing.assert_array_equal(val.images, val_images)
    assert (train.mean, train.std) == (IMAGENET_MEAN, IMAGENET_STD)
    # The parent of tiny-imagenet-200 works too.
    parent = DATASETS["tinyimagenet"](DataConfig(name="tinyimagenet", root=str(root.parent), image_size=64), "val")
    np.testing.assert_array_equal(parent.labels, val.labels)


def test_tinyimagenet_jpeg_upper_case(tmp_path):
    smooth = np.broadcast_to(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 64, 3))
    images = np.stack([smooth, smooth[::-1]])
    root = write_tinyimagenet(tmp_path, images, [0, 1], images[:1], [1], ext="JPEG")
    data = decode_files(list_folder(root, "train"), 64)
    assert np.abs(data.images.astype(int) - images).mean() < 3  # lossy, but the same picture
    assert list_folder(root, "val").labels.tolist() == [1]


def test_tinyimagenet_resized(tiny):
    root = tiny[0]
    data = load_dataset(DataConfig(name="tinyimagenet", root=str(root), image_size=32), "train")
    assert data.images.shape == (6, 32, 32, 3)


def test_tinyimagenet_bad_annotation(tiny):
    root = tiny[0]
    with open(root / "val" / "val_annotations.txt", "a") as f:
        f.write("val_9.png\tn9999\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match="line 5"):
        list_tinyimagenet(root, "val")


def test_tinyimagenet_missing_root(tmp_path):
    missing = tmp_path / "tiny-imagenet-200"
    with pytest.raises(UserError) as err:
        load_dataset(DataConfig(name="tinyimagenet", root=str(missing)), "train")
    assert str(missing) in str(err.value) and "http://cs231n.stanford.edu/tiny-imagenet-200.zip" in str(err.value)
    missing.mkdir()
    with pytest.raises(UserError, match="wnids.txt"):
        list_tinyimagenet(missing, "train")


def test_image_folder_mixed_sizes(tmp_path):
    rng = np.random.default_rng(0)
    shapes = [(32, 32, 3), (20, 48, 3), (64, 64, 3), (16, 16, 3)]
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]
    root = write_image_folder(tmp_path / "folder", images, [1, 0, 1, 0])
    data = load_dataset(DataConfig(name="imagefolder", root=str(root), image_size=32), "train")
    assert data.images.shape == (4, 32, 32, 3) and data.classes == ("class_000", "class_001")
    # Class folders sorted, files sorted inside: class_000 holds images 1 and 3.
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(data.images[2], images[0])  # already 32 x 32: untouched
    expected = np.asarray(Image.fromarray(images[1]).resize((32, 32), Image.BILINEAR))
    np.testing.assert_array_equal(data.images[0], expected)


def test_image_folder_extensions_and_modes(tmp_path):
    (tmp_path / "b").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    gray = np.full((8, 8), 77, dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "a" / "gray.PNG")  # upper-case extension, one channel
    save_image(np.zeros((8, 8, 3), np.uint8), tmp_path / "b" / "x.jpeg", "jpeg")
    save_image(np.zeros((8, 8, 3), np.uint8), tmp_path / "b" / "y.webp", "webp")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    files = list_image_folder(tmp_path)
    assert [p.rsplit("/", 1)[1] for p in files.paths] == ["gray.PNG", "x.jpeg", "y.webp"]
    data = decode_files(files, 8)
    assert np.all(data.images[0] == 77)


def test_image_folder_splits(tmp_path):
    images = _images(5, size=16)
    write_image_folder(tmp_path / "train", images, [0, 1, 2, 0, 1], classes=("cat", "dog", "eel"))
    write_image_folder(tmp_path / "val", images[:2], [0, 0], classes=("dog",))  # a class subset
    train, val = list_folder(tmp_path, "train"), list_folder(tmp_path, "val")
    assert train.classes == val.classes == ("cat", "dog", "eel")
    assert val.labels.tolist() == [1, 1]


def test_image_folder_val_class_unknown(tmp_path):
    write_image_folder(tmp_path / "train", _images(2, size=16), [0, 0], classes=("cat",))
    write_image_folder(tmp_path / "val", _images(1, size=16), [0], classes=("dog",))
    with pytest.raises(UserError, match="dog"):
        list_folder(tmp_path, "val")


def test_image_folder_without_val(tmp_path):
    write_image_folder(tmp_path, _images(2, size=16), [0, 1])
    assert len(list_folder(tmp_path, "train")) == 2
    with pytest.raises(UserError, match="no val/ folder"):
        list_folder(tmp_path, "val")


def test_list_folder_detects_tinyimagenet(tiny):
    assert list_folder(tiny[0], "val").classes == WNIDS


@pytest.mark.parametrize("split", ["train", "val"])
def test_parent_of_tinyimagenet_lists_the_same_files(tiny, split):
    """root = the folder the zip was unpacked in: every reader (list_folder for DALI and
    FFCV, both registry entries for torch) finds tiny-imagenet-200/ inside it."""
    root, (_, train_labels), (_, val_labels) = tiny
    direct = list_tinyimagenet(root, split)
    for files in (list_folder(root.parent, split), list_tinyimagenet(root.parent, split)):
        assert files.paths == direct.paths and files.classes == WNIDS
        np.testing.assert_array_equal(files.labels, val_labels if split == "val" else train_labels)
    for name in ("tinyimagenet", "imagefolder"):
        data = load_dataset(DataConfig(name=name, root=str(root.parent), image_size=64), split)
        assert data.classes == WNIDS
        np.testing.assert_array_equal(data.labels, direct.labels)


def test_parent_without_tinyimagenet_stays_an_image_folder(tmp_path):
    # A class folder of an ImageFolder tree is not mistaken for tiny-imagenet-200/ ...
    write_image_folder(tmp_path / "a", _images(2, size=16), [0, 1], classes=("tiny-imagenet-200", "zebra"))
    assert list_folder(tmp_path / "a").classes == ("tiny-imagenet-200", "zebra")
    # ... and a tiny-imagenet-200/ without wnids.txt is no Tiny-ImageNet root.
    (tmp_path / "b" / "tiny-imagenet-200").mkdir(parents=True)
    with pytest.raises(UserError, match="wnids.txt"):
        list_tinyimagenet(tmp_path / "b", "train")


def test_empty_and_missing(tmp_path):
    with pytest.raises(UserError, match="no images"):
        list_image_folder(tmp_path)
    (tmp_path / "cls").mkdir()
    with pytest.raises(UserError, match="no images"):
        list_image_folder(tmp_path)
    with pytest.raises(UserError, match=str(tmp_path / "absent")):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "absent")), "train")
    with pytest.raises(UserError, match="data.root is empty"):
        load_dataset(DataConfig(name="imagefolder", root=""), "train")


def test_unreadable_image_is_named(tmp_path):
    write_image_folder(tmp_path, _images(3, size=8), [0, 0, 0])
    bad = tmp_path / "class_000" / "000001.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(UserError, match="000001.png"):
        decode_files(list_image_folder(tmp_path), 8, workers=2)


def test_workers_agree(tmp_path):
    root = write_image_folder(tmp_path, [_images(1, size=s, seed=s)[0] for s in (10, 20, 30, 40, 50)], [0, 1, 0, 1, 0])
    files = list_image_folder(root)
    serial, threaded = decode_files(files, 24, workers=1), decode_files(files, 24, workers=3)
    np.testing.assert_array_equal(serial.images, threaded.images)


def test_file_list_checks_lengths():
    with pytest.raises(ValueError, match="2 paths but 1 labels"):
        FileList(("a", "b"), np.array([0]), ("x",))


def test_a_single_tree_holds_out_a_seeded_val_split(tmp_path):
    labels = np.array([0] * 10 + [1] * 5 + [2])
    write_image_folder(tmp_path, _images(16, size=8), labels)
    train, val = (list_folder(tmp_path, s, val_fraction=0.2, seed=3) for s in ("train", "val"))
    assert len(train) + len(val) == 16 and not set(train.paths) & set(val.paths)
    assert np.bincount(val.labels, minlength=3).tolist() == [2, 1, 0]  # a one-image class stays in train
    assert val.paths == list_folder(tmp_path, "val", val_fraction=0.2, seed=3).paths
    assert val.paths != list_folder(tmp_path, "val", val_fraction=0.2, seed=4).paths
    with pytest.raises(UserError, match="data.val_fraction"):
        list_folder(tmp_path, "val")
    write_image_folder(tmp_path / "split" / "train", _images(2, size=8), [0, 1])
    write_image_folder(tmp_path / "split" / "val", _images(2, size=8), [0, 1])
    with pytest.raises(UserError, match="has its own val split"):
        list_folder(tmp_path / "split", "train", val_fraction=0.2)
