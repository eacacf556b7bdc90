"""The decode cache: a second read decodes nothing; a stale or damaged entry is rebuilt."""

import json
import os

import numpy as np
import pytest

import pipelines.datasets.decode as decode_module
from gssl_fast.config import DataConfig
from pipelines.datasets import DATASETS
from pipelines.datasets.cache import entry_key
from pipelines.datasets.folders import list_folder
from pipelines.datasets.testing import write_image_folder, write_unreadable


@pytest.fixture
def counted(monkeypatch):
    """Counts the files ``decode_files`` decodes."""
    calls = []
    real = decode_module.decode_files

    def counting(files, *args, **kw):
        calls.append(len(files))
        return real(files, *args, **kw)

    monkeypatch.setattr(decode_module, "decode_files", counting)
    return calls


def setup(tmp_path, **data):
    rng = np.random.default_rng(0)
    root = write_image_folder(tmp_path / "tree", rng.integers(0, 256, (6, 12, 12, 3), dtype=np.uint8),
                              np.arange(6) % 2)
    cfg = DataConfig(name="imagefolder", root=str(root), image_size=8, cache_dir=str(tmp_path / "cache"), **data)
    return root, cfg, lambda: DATASETS["imagefolder"](cfg, "train")


def entry(root, cfg, suffix: str) -> str:
    return os.path.join(cfg.cache_dir, entry_key(list_folder(root), cfg.image_size) + suffix)


def same(a, b) -> bool:
    return np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels) and a.skipped == b.skipped


def test_a_second_read_comes_from_the_cache(tmp_path, counted):
    root, cfg, read = setup(tmp_path)
    first = read()
    second = read()
    assert counted == [6] and same(first, second)
    uncached = DATASETS["imagefolder"](DataConfig(**{**cfg.__dict__, "decode_cache": False}), "train")
    assert same(first, uncached) and counted == [6, 6]


@pytest.mark.parametrize("damage", ["touched", "replaced", "flipped_byte", "truncated", "no_info", "bad_info",
                                    "info_not_an_object", "info_without_checksum"])
def test_a_stale_or_damaged_entry_is_rebuilt(tmp_path, counted, damage):
    root, cfg, read = setup(tmp_path)
    first = read()
    data, info = entry(root, cfg, ".npy"), entry(root, cfg, ".json")
    image = root / "class_000" / "000000.png"
    if damage == "touched":
        os.utime(image, ns=(0, 12345))
    elif damage == "replaced":
        write_image_folder(tmp_path / "other", np.zeros((1, 12, 12, 3), np.uint8), [0])
        os.replace(tmp_path / "other" / "class_000" / "000000.png", image)
    elif damage == "flipped_byte":
        raw = bytearray(open(data, "rb").read())
        raw[-5] ^= 0xFF
        open(data, "wb").write(bytes(raw))
    elif damage == "truncated":
        os.truncate(data, 100)
    elif damage == "no_info":
        os.unlink(info)
    elif damage == "info_not_an_object":
        open(info, "w").write("[1, 2]")
    elif damage == "info_without_checksum":
        content = json.loads(open(info).read())
        del content["checksum"]
        open(info, "w").write(json.dumps(content))
    else:
        open(info, "w").write("{not json")
    again = read()
    assert counted == [6, 6]
    if damage == "replaced":
        assert not same(first, again) and not again.images[0].any()
    else:
        assert same(first, again)
    assert same(again, read()) and counted == [6, 6], "the rebuilt entry serves the next read"


def test_skipped_files_are_remembered(tmp_path, counted):
    root, cfg, read = setup(tmp_path, on_corrupt="skip")
    write_unreadable(root / "class_001" / "bad.png", "empty")
    first = read()
    assert len(first) == 6 and first.skipped[0][0].endswith("bad.png")
    assert same(first, read()) and counted == [7]
    with pytest.raises(ValueError, match="bad.png"):  # "error" does not reuse what "skip" decoded
        DATASETS["imagefolder"](DataConfig(**{**cfg.__dict__, "on_corrupt": "error"}), "train")


def test_an_unwritable_cache_warns_and_goes_on(tmp_path, counted):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    root, cfg, read = setup(tmp_path)
    with pytest.warns(UserWarning, match="decoded again next run"):
        assert len(read()) == 6


def test_the_list_of_unreadable_files_is_remembered_until_a_file_changes(tmp_path):
    from pipelines.datasets.cache import cached_screen
    from pipelines.datasets.decode import screen_files

    root, cfg, _ = setup(tmp_path)
    bad = write_unreadable(root / "class_000" / "bad.png", "not_image")
    calls = []

    def screen(files):
        calls.append(len(files))
        return screen_files(files, workers=1)

    first = cached_screen(list_folder(root), cfg.cache_dir, screen)
    again = cached_screen(list_folder(root), cfg.cache_dir, screen)
    assert calls == [7] and [p for p, _ in again.skipped] == [str(bad)]
    assert again.paths == first.paths and np.array_equal(again.labels, first.labels) and len(again) == 6
    write_unreadable(bad, "empty")  # changed: screened again
    assert cached_screen(list_folder(root), cfg.cache_dir, screen).skipped[0][1] == "is empty (0 bytes)"
    assert calls == [7, 7]
