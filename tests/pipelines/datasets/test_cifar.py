import os
import pickle
import struct

import numpy as np
import pytest

from gssl_fast.config import DataConfig
from pipelines.datasets import CIFAR_MEAN, CIFAR_STD, DATASETS, load_dataset
from pipelines.datasets.cifar import load_plain_pickle, read_batch, read_cifar10
from pipelines.datasets.testing import CIFAR10_CLASSES, write_cifar10, write_cifar100
from pipelines.errors import UserError


def _random_images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.fixture
def cifar10_root(tmp_path):
    images, labels = _random_images(23), np.arange(23) % 10
    val_images, val_labels = _random_images(7, seed=1), np.array([3, 1, 4, 1, 5, 9, 2])
    root = write_cifar10(tmp_path / "cifar-10-batches-py", images, labels,
                         val_images=val_images, val_labels=val_labels)
    return root, (images, labels), (val_images, val_labels)


@pytest.mark.parametrize("parent", [False, True], ids=["batches-folder", "parent-folder"])
def test_cifar10_round_trip(cifar10_root, parent):
    root, (images, labels), (val_images, val_labels) = cifar10_root
    cfg = DataConfig(name="cifar10", root=str(root.parent if parent else root))
    train, val = DATASETS["cifar10"](cfg, "train"), DATASETS["cifar10"](cfg, "val")
    np.testing.assert_array_equal(train.images, images)  # data_batch_1..5 in order
    np.testing.assert_array_equal(train.labels, labels)
    np.testing.assert_array_equal(val.images, val_images)
    np.testing.assert_array_equal(val.labels, val_labels)
    assert train.labels.dtype == np.int64 and train.images.flags.c_contiguous
    assert train.classes == CIFAR10_CLASSES
    assert (train.mean, train.std) == (CIFAR_MEAN, CIFAR_STD)


def test_channel_major_rows_become_hwc(tmp_path):
    """Written by hand, not by the fixture writer: row = 1024 red, 1024 green, 1024 blue."""
    row = np.zeros((1, 3072), dtype=np.uint8)
    row[0, 0] = 11  # red of pixel (0, 0)
    row[0, 1] = 12  # red of pixel (0, 1): columns run fastest
    row[0, 32] = 13  # red of pixel (1, 0)
    row[0, 1024] = 21  # green of pixel (0, 0)
    row[0, 2048 + 32 * 5 + 7] = 37  # blue of pixel (5, 7)
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": row, b"labels": [4]}, f, protocol=2)
    images, labels = read_batch(path, "labels")
    assert images.shape == (1, 32, 32, 3) and labels.tolist() == [4]
    assert images[0, 0, 0].tolist() == [11, 21, 0]
    assert images[0, 0, 1, 0] == 12 and images[0, 1, 0, 0] == 13 and images[0, 5, 7, 2] == 37
    assert int(images.sum()) == 11 + 12 + 13 + 21 + 37


def _python2_pickle(data: np.ndarray, labels) -> bytes:
    """A CIFAR batch as Python 2's cPickle wrote it: byte strings (SHORT_BINSTRING, BINSTRING)
    and NumPy 1's module names, opcode by opcode."""
    def s(text: bytes) -> bytes:
        return b"U" + bytes([len(text)]) + text

    n = data.shape[0]
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"K\x00\x85" + s(b"b") + b"\x87R"
        + b"(K\x01" + b"K" + bytes([n]) + b"M" + struct.pack("<H", 3072) + b"\x86"
        + b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R"
        + b"(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + b"\x89" + b"T" + struct.pack("<I", data.size) + data.tobytes() + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + array + s(b"labels") + label_list + s(b"batch_label") + s(b"x") + b"u."


def test_python2_style_pickle(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    path = tmp_path / "test_batch"
    path.write_bytes(_python2_pickle(data, [7, 0, 9]))
    images, labels = read_batch(path, "labels")
    assert labels.tolist() == [7, 0, 9]
    np.testing.assert_array_equal(images, data.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))


def test_cifar100_round_trip(tmp_path):
    images, labels = _random_images(12), np.array([0, 99, 5, 50, 7, 7, 1, 2, 3, 98, 4, 6])
    root = write_cifar100(tmp_path / "cifar-100-python", images, labels, val_images=images[:4], val_labels=labels[:4])
    cfg = DataConfig(name="cifar100", root=str(tmp_path))
    train, val = DATASETS["cifar100"](cfg, "train"), DATASETS["cifar100"](cfg, "val")
    np.testing.assert_array_equal(train.images, images)
    np.testing.assert_array_equal(train.labels, labels)  # fine labels, not coarse
    np.testing.assert_array_equal(val.labels, labels[:4])
    assert train.num_classes == 100 and train.classes[99] == "class_099"
    (root / "meta").unlink()
    assert DATASETS["cifar100"](cfg, "val").classes == tuple(str(i) for i in range(100))


def test_missing_meta_gives_numbered_classes(tmp_path):
    root = write_cifar10(tmp_path, _random_images(5), np.arange(5), classes=None)
    assert read_cifar10(root, "val").classes == tuple(str(i) for i in range(10))


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Open:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("payload", [_System, _Open])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, payload):
    root = write_cifar10(tmp_path / "cifar", _random_images(5), np.arange(5))
    marker = tmp_path / "pwned"
    with open(root / "data_batch_2", "wb") as f:
        pickle.dump({b"data": payload(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(UserError, match="other than plain data") as err:
        load_dataset(DataConfig(name="cifar10", root=str(root)), "train")
    assert str(root / "data_batch_2") in str(err.value) and "not executed" in str(err.value)
    assert not marker.exists()


def test_codec_other_than_latin1_is_refused(tmp_path):
    class Rot13:
        def __reduce__(self):
            import _codecs
            return _codecs.encode, ("data", "rot13")

    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": Rot13()}, protocol=2))
    with pytest.raises(UserError, match="other than plain data") as err:
        load_plain_pickle(path)
    assert str(path) in str(err.value) and "rot13" in str(err.value)


def test_plain_pickle_loads_containers(tmp_path):
    obj = {b"a": [1, 2.5, None, True], "b": (b"", b"xyz", "text"), "c": np.arange(6, dtype=np.int16).reshape(2, 3)}
    path = tmp_path / "plain"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    back = load_plain_pickle(path)
    assert back[b"a"] == [1, 2.5, None, True] and back["b"] == (b"", b"xyz", "text")
    np.testing.assert_array_equal(back["c"], obj["c"])


@pytest.mark.parametrize("data, match", [
    (np.zeros((2, 3072), dtype=np.float32), "uint8"),
    (np.zeros((2, 1000), dtype=np.uint8), "3072"),
    ([1, 2, 3], "3072"),
])
def test_bad_arrays_name_the_file(tmp_path, data, match):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1]}, protocol=2))
    with pytest.raises(UserError, match=match) as err:
        read_batch(path, "labels")
    assert str(path) in str(err.value)


def test_label_count_mismatch(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2))
    with pytest.raises(UserError, match="one per image"):
        read_batch(path, "labels")


def test_not_a_pickle(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(UserError, match=str(path)):
        read_batch(path, "labels")


def test_missing_root_names_path_and_source(tmp_path):
    missing = tmp_path / "nowhere"
    for name in ("cifar10", "cifar100"):
        with pytest.raises(UserError) as err:
            load_dataset(DataConfig(name=name, root=str(missing)), "train")
        message = str(err.value)
        assert str(missing) in message and "https://www.cs.toronto.edu/~kriz/cifar.html" in message
        assert "python version" in message
    with pytest.raises(UserError, match="data.root"):
        load_dataset(DataConfig(name="cifar10", root=""), "train")


def test_missing_file_is_named(cifar10_root):
    root = cifar10_root[0]
    (root / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3") as err:
        read_cifar10(root, "train")
    assert "cifar-10-batches-py" in str(err.value)
    assert len(read_cifar10(root, "val")) == 7  # the val split does not need it


def test_labels_out_of_range(tmp_path):
    root = write_cifar10(tmp_path, _random_images(5), [0, 1, 2, 3, 10])
    with pytest.raises(UserError, match="0..9"):
        read_cifar10(root, "train")
