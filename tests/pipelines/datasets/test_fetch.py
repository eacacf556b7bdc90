"""pipelines.datasets.fetch against a loopback HTTP server: download, resume, checksum,
safe unpacking, hand-placed archives, mirrors; the readers read what it unpacks."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import zipfile
from dataclasses import replace

import numpy as np
import pytest

from gssl_fast.config import DataConfig
from pipelines.datasets import load_dataset
from pipelines.datasets.cifar import read_cifar10, read_cifar100
from pipelines.datasets.fetch import ARCHIVES, fetch, md5_of, root_for
from pipelines.errors import UserError
from tests.pipelines.datasets.archive_server import SAMPLES  # its fixtures: tests/conftest.py


def _read(name, folder):
    """(train, val) of the fetched ``folder``, by the project's readers."""
    if name == "cifar10":
        return read_cifar10(folder, "train"), read_cifar10(folder, "val")
    if name == "cifar100":
        return read_cifar100(folder, "train"), read_cifar100(folder, "val")
    cfg = DataConfig(name=name, root=str(folder), image_size=16)
    return load_dataset(cfg, "train"), load_dataset(cfg, "val")


def md5_of_served(server, name):
    return hashlib.md5(server.files[name]).hexdigest()


def _left_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "tinyimagenet"])
def test_each_dataset_is_fetched_unpacked_and_read(served, archives, tmp_path, name):
    root = tmp_path / "data"
    folder = fetch(name, root, progress=False)
    assert folder == root / ARCHIVES[name].folder
    train, val = _read(name, folder)
    images, labels, val_images, val_labels = SAMPLES[name]
    np.testing.assert_array_equal(train.labels, labels)
    np.testing.assert_array_equal(val.labels, val_labels)
    if name == "tinyimagenet":  # JPEG: the pixels are close, not equal
        assert train.images.shape == images.shape and val.images.shape == val_images.shape
        assert (folder / "test" / "images" / "test_0.JPEG").is_file()
    else:
        np.testing.assert_array_equal(train.images, images)
        np.testing.assert_array_equal(val.images, val_images)
    # The archive is kept, whole; no download or unpack folder is left.
    file = ARCHIVES[name].file
    assert md5_of(root / file) == md5_of(archives[name])
    assert sorted(p.name for p in root.iterdir()) == sorted([file, ARCHIVES[name].folder])


@pytest.mark.parametrize("honour_range", [True, False], ids=["206", "200-starts-over"])
def test_a_cut_download_resumes_with_a_range_request(served, archives, tmp_path, honour_range):
    root, cut = tmp_path / "data", 1000
    served.cut_after = cut
    with pytest.raises(UserError, match="rerun to resume") as e:
        fetch("cifar10", root, progress=False)
    assert "\n" not in str(e.value) and ARCHIVES["cifar10"].url in str(e.value)
    part = root / "cifar-10-python.tar.gz.part"
    assert part.stat().st_size == cut and not (root / "cifar-10-batches-py").exists()

    served.honour_range = honour_range
    folder = fetch("cifar10", root, progress=False)
    assert served.requests[-1] == ("cifar-10-python.tar.gz", f"bytes={cut}-", 206 if honour_range else 200)
    assert md5_of(root / "cifar-10-python.tar.gz") == md5_of(archives["cifar10"]) and not part.exists()
    np.testing.assert_array_equal(read_cifar10(folder, "train").images, SAMPLES["cifar10"][0])


def test_a_whole_part_file_is_checked_when_the_server_has_nothing_past_it(served, archives, tmp_path):
    """A run killed after the last byte but before the rename: the server answers 416."""
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(archives["cifar100"], root / "cifar-100-python.tar.gz.part")
    size = archives["cifar100"].stat().st_size
    assert fetch("cifar100", root, progress=False).is_dir()
    assert served.requests == [("cifar-100-python.tar.gz", f"bytes={size}-", 416)]


def test_a_wrong_checksum_is_refused_before_unpacking(served, monkeypatch, tmp_path):
    root, wrong = tmp_path / "data", "0" * 32
    monkeypatch.setitem(ARCHIVES, "cifar10", replace(ARCHIVES["cifar10"], md5=wrong))
    with pytest.raises(UserError) as e:
        fetch("cifar10", root, progress=False)
    found = md5_of_served(served, "cifar-10-python.tar.gz")
    message = str(e.value)
    assert "\n" not in message and "cifar-10-python.tar.gz" in message
    assert f"expected {wrong}" in message and f"md5 {found}" in message and "deleted" in message
    assert _left_under(root) == []  # the bad download removed; nothing unpacked


def test_a_bad_archive_placed_by_hand_is_left_alone(served, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-100-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(UserError, match="left as it is") as e:
        fetch("cifar100", root, progress=False)
    assert ARCHIVES["cifar100"].md5 in str(e.value) and "\n" not in str(e.value)
    assert (root / "cifar-100-python.tar.gz").read_bytes() == b"not the archive"
    assert _left_under(root) == ["cifar-100-python.tar.gz"] and served.requests == []


def test_a_refused_connection_names_the_url_and_the_hand_placement(served, tmp_path):
    served.close()
    root = tmp_path / "data"
    with pytest.raises(UserError) as e:
        fetch("tinyimagenet", root, progress=False)
    message = str(e.value)
    assert "\n" not in message and ARCHIVES["tinyimagenet"].url in message
    assert "download tiny-imagenet-200.zip" in message and f"into {root}/ and rerun" in message
    assert not root.exists()


def test_an_http_error_names_the_status(served, monkeypatch, tmp_path):
    monkeypatch.setitem(ARCHIVES, "cifar10", replace(ARCHIVES["cifar10"], url=served.url + "moved.tar.gz"))
    with pytest.raises(UserError, match=r"HTTP 404 .*into .*/ and rerun"):
        fetch("cifar10", tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists()


def test_an_archive_placed_by_hand_is_unpacked_offline(served, archives, tmp_path):
    served.close()  # any connection attempt would now fail
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(archives["cifar10"], root / "cifar-10-python.tar.gz")
    folder = fetch("cifar10", root, progress=False)
    np.testing.assert_array_equal(read_cifar10(folder, "val").labels, SAMPLES["cifar10"][3])


@pytest.mark.parametrize("slash", ["", "/"])
def test_a_mirror_serves_the_same_file_names(served, archives, monkeypatch, tmp_path, slash):
    monkeypatch.setitem(ARCHIVES, "cifar100", replace(ARCHIVES["cifar100"], url=served.url + "gone.tar.gz"))
    served.add(archives["cifar100"], "mirror/cifar-100-python.tar.gz")
    folder = fetch("cifar100", tmp_path / "data", mirror=served.url + "mirror" + slash, progress=False)
    assert served.requests == [("mirror/cifar-100-python.tar.gz", None, 200)]
    np.testing.assert_array_equal(read_cifar100(folder, "train").labels, SAMPLES["cifar100"][1])


def test_a_present_folder_is_returned_without_downloading(served, tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    assert fetch("cifar10", tmp_path / "data") == folder and served.requests == []


def test_a_leftover_unpack_folder_is_removed(served, tmp_path):
    leftover = tmp_path / "data" / ".cifar10.unpack-killed"
    (leftover / "cifar-10-batches-py").mkdir(parents=True)
    fetch("cifar10", tmp_path / "data", progress=False)
    assert not leftover.exists() and (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").is_file()


def _tar_gz(members) -> bytes:
    """A .tar.gz of ``(name, kind)``: kind "file" (8 bytes) or "symlink:<target>"."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind.startswith("symlink:"):
                info.type, info.linkname = tarfile.SYMTYPE, kind.split(":", 1)[1]
                tar.addfile(info)
            else:
                info.size = 8
                tar.addfile(info, io.BytesIO(b"x" * 8))
    return out.getvalue()


def _zip(names) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name in names:
            zf.writestr(name, b"x" * 8)
    return out.getvalue()


UNSAFE = {
    "dotdot": ("cifar10", _tar_gz([("cifar-10-batches-py/test_batch", "file"), ("../escaped", "file")])),
    "absolute": ("cifar10", _tar_gz([("cifar-10-batches-py/test_batch", "file"), ("/tmp/escaped", "file")])),
    "link-out": ("cifar10", _tar_gz([("cifar-10-batches-py/link", "symlink:../../escaped")])),
    "zip-dotdot": ("tinyimagenet", _zip(["tiny-imagenet-200/wnids.txt", "tiny-imagenet-200/../../escaped"])),
}


@pytest.mark.parametrize("case", UNSAFE)
def test_an_unsafe_member_is_refused_and_nothing_unpacked(served, monkeypatch, tmp_path, case):
    name, data = UNSAFE[case]
    spec = ARCHIVES[name]
    served.files[spec.file] = data
    monkeypatch.setitem(ARCHIVES, name, replace(spec, md5=md5_of_served(served, spec.file)))
    root = tmp_path / "deep" / "data"
    with pytest.raises(UserError) as e:
        fetch(name, root, progress=False)
    message = str(e.value)
    assert "\n" not in message and str(root / spec.file) in message and "unsafe member" in message
    assert _left_under(root) == [spec.file]  # only the archive: no folder, no unpack leftovers
    assert not list(tmp_path.rglob("escaped"))


def test_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(UserError, match="valid: cifar10, cifar100, tinyimagenet"):
        fetch("imagenet")


def test_root_for_a_recipes_data_root():
    assert str(root_for("cifar10", "data/cifar-10-batches-py")) == "data"
    assert str(root_for("tinyimagenet", "/big/disk")) == "/big/disk"
    with pytest.raises(UserError, match="data.root is empty"):
        root_for("cifar100", "")


def test_the_progress_bar_shows_on_stderr_when_asked(served, tmp_path, capsys):
    fetch("cifar100", tmp_path / "data", progress=True)
    assert "cifar-100-python.tar.gz" in capsys.readouterr().err
