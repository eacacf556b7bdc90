"""WebDataset shards: the writer (pipelines.datasets.shards) and the readers of the torch
backend (pipelines.torch_shards) and of DALI (pipelines.dali.shards), against the folder
stream of the same files and against each other."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gssl_fast.config import DataConfig
from pipelines import make_loader
from pipelines.datasets import list_folder
from pipelines.datasets.shards import READERS, list_shards, write_dataset, write_shards
from pipelines.datasets.testing import write_imagenet_style, write_unreadable
from pipelines.errors import UserError
from pipelines.stream import Decode, ShardSource, StreamSource, read_image
from tests.pipelines.loader_contract import collect

RRC = Decode("random_resized", scale=(0.2, 1.0))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_imagenet_style(tmp_path_factory.mktemp("tree"), (10, 3), classes=4)


@pytest.fixture(scope="module")
def shards(tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    cfg = DataConfig(name="imagefolder", root=str(tree))
    write_dataset(cfg, "train", out, shard_size=7, seed=3)
    write_dataset(cfg, "val", out, shard_size=7)
    return out


def members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


@pytest.fixture(params=READERS)
def reader(request) -> str:
    """Each backend that reads shards (DALI where it is installed)."""
    if request.param == "dali":
        pytest.importorskip("nvidia.dali")
    return request.param


def loader(source, reader: str = "torch", **kwargs):
    """A shard loader of uint8 images, the views off; ``num_workers`` for torch alone."""
    options = dict(batch_size=6, image_size=32, normalize=False, device="cpu", seed=5, tasks=(), augment=False)
    if reader == "torch":
        options["num_workers"] = 0
    else:
        kwargs.pop("num_workers", None)
    return make_loader(source, backend=reader, **{**options, **kwargs})


def by_key(batches) -> dict[int, tuple[torch.Tensor, int]]:
    return {int(k): (image, int(label))
            for b in batches for k, image, label in zip(b["indices"], b["images"], b["labels"])}


def test_a_folder_becomes_shards_of_its_own_bytes_with_a_listing(tree, shards):
    files = list_folder(tree, "train")
    listing = json.loads((shards / "train.json").read_text())
    assert listing["total"] == 40 and listing["classes"] == list(files.classes)
    assert [s["samples"] for s in listing["shards"]] == [7, 7, 7, 7, 7, 5]
    keys = [k for s in listing["shards"] for k in s["keys"]]
    assert sorted(keys) == list(range(40)) and keys != sorted(keys)  # every position once, in a drawn order
    for shard in listing["shards"]:
        got = members(shards / shard["name"])
        assert [name for name, _ in got] == [f"{k:09d}.{ext}" for k in shard["keys"] for ext in ("jpg", "cls")]
        for key, label, (_, jpg), (_, cls) in zip(shard["keys"], shard["labels"], got[::2], got[1::2]):
            assert jpg == Path(files.paths[key]).read_bytes() and cls == str(label).encode()
            assert label == files.labels[key]
    assert not list(shards.glob(".*"))  # no temporary file left
    val = json.loads((shards / "val.json").read_text())
    assert [k for s in val["shards"] for k in s["keys"]] == list(range(12))  # val: written in order


def test_the_dali_index_gives_each_members_data_offset(shards):
    tar_path = shards / "train-000002.tar"
    lines = (shards / "train-000002.idx").read_text().splitlines()
    assert lines[0] == "v1.2 7"
    listed = [tuple(line.split()[i:i + 4]) for line in lines[1:] for i in (0, 4)]
    with tarfile.open(tar_path) as tar:
        assert listed == [(m.name.split(".")[1], str(m.offset_data), str(m.size), m.name) for m in tar]


def test_arrays_become_png_shards(tmp_path):
    cfg = DataConfig(name="shapes", image_size=16, train_size=12, val_size=4)
    write_dataset(cfg, "train", tmp_path, shard_size=5)
    from pipelines.datasets import load_dataset

    images = load_dataset(cfg, "train").images
    got = [m for shard in sorted(tmp_path.glob("train-*.tar")) for m in members(shard)]
    assert [name for name, _ in got[::2]] == [f"{k:09d}.png" for k in range(12)]
    for k, (_, data) in enumerate(got[::2]):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), images[k])


def test_a_failed_write_leaves_no_shard_and_no_listing(tmp_path):
    def broken():
        for key in range(5):
            yield key, "png", b"\x89PNG\r\n\x1a\n", 0
        raise RuntimeError("the source failed")

    with pytest.raises(RuntimeError):
        write_shards(broken(), tmp_path, "train", ["a"], shard_size=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.idx", "train-000000.tar"]


def test_listing_a_pattern_a_folder_and_what_is_wrong(shards):
    whole = list_shards(shards, "train")
    part = list_shards(str(shards / "train-{000001..000002}.tar"))
    assert len(whole) == 40 and len(part) == 14 and part.counts == (7, 7)
    assert np.array_equal(whole.keys, np.arange(40)) and list(part.keys) == sorted(part.keys)
    with pytest.raises(UserError, match="listing .*nowhere.json does not exist"):
        list_shards(str(shards / "nowhere-{000000..000001}.tar"))
    with pytest.raises(UserError, match="train-000006.tar is not listed in .*train.json, which lists "
                                        "train-000000.tar .. train-000005.tar"):
        list_shards(str(shards / "train-{000005..000009}.tar"))
    with pytest.raises(UserError, match="data.val_root is empty"):
        list_shards("", key="data.val_root")


def test_shards_give_the_images_of_the_folder_stream(tree, shards):
    """A sample's key is its position in the folder's list: the same window of the same
    bytes, so the same pixels and label."""
    files = list_folder(tree, "train")
    streamed = by_key(loader(StreamSource(files, RRC), shuffle=False))
    sharded = by_key(loader(ShardSource(list_shards(shards, "train"), RRC), shuffle=False))
    assert sorted(sharded) == sorted(streamed) == list(range(40))
    for key, (image, label) in sharded.items():
        assert torch.equal(image, streamed[key][0]) and label == streamed[key][1] == files.labels[key]


def test_an_epoch_is_a_function_of_seed_epoch_and_rank_alone(shards):
    source = ShardSource(list_shards(shards, "train"), RRC, shuffle_buffer=9)
    one = loader(source, drop_last=True)
    first, second = list(one), list(one)
    assert not torch.equal(torch.cat([b["indices"] for b in first]), torch.cat([b["indices"] for b in second]))
    again = loader(source, drop_last=True, num_workers=3)  # any number of workers
    again.set_epoch(1)
    for a, b in zip(second, again):
        assert torch.equal(a["indices"], b["indices"]) and torch.equal(a["images"], b["images"])
    other = loader(source, drop_last=True, seed=6)
    assert not torch.equal(first[0]["indices"], next(iter(other))["indices"])


def test_two_ranks_read_disjoint_shards_and_take_as_many_batches(shards, reader):
    source = ShardSource(list_shards(shards, "train"), RRC)
    ranks = [loader(source, reader, shard_id=r, num_shards=2, drop_last=True) for r in range(2)]
    # rank 0: shards 0, 2, 4 (21 samples), rank 1: shards 1, 3, 5 (19): 19 // 6 = 3 batches each
    assert [len(r) for r in ranks] == [3, 3]
    seen = [torch.cat([b["indices"] for b in r]) for r in ranks]
    assert [len(s) for s in seen] == [18, 18] and not set(seen[0].tolist()) & set(seen[1].tolist())
    listing = json.loads((shards / "train.json").read_text())
    for r, s in enumerate(seen):
        assert set(s.tolist()) <= {k for shard in listing["shards"][r::2] for k in shard["keys"]}
    every = [loader(source, reader, shard_id=r, num_shards=2, shuffle=False) for r in range(2)]
    assert sorted(torch.cat([b["indices"] for r in every for b in r]).tolist()) == list(range(40))
    with pytest.raises(UserError, match="data.root names 6 shards, fewer than the 7 processes"):
        loader(source, reader, shard_id=0, num_shards=7)


def copy_shards(shards: Path, to: Path) -> Path:
    to.mkdir()
    for path in shards.iterdir():
        (to / path.name).write_bytes(path.read_bytes())
    return to


def test_a_shard_that_ends_early_is_named_or_read_past(shards, tmp_path, capsys, reader):
    bad = copy_shards(shards, tmp_path / "shards") / "train-000001.tar"
    with tarfile.open(bad) as tar:
        cut = list(tar)[6].offset_data + 100  # inside the fourth sample's image: the third is lost too
    bad.write_bytes(bad.read_bytes()[:cut])
    source = list_shards(bad.parent, "train")
    with pytest.raises(UserError, match=r"shard .*train-000001.tar ends early after sample \d{9} "
                                        r"\(2 of its 7 samples read\): unexpected end of data"):
        list(loader(ShardSource(source, RRC), reader, shuffle=False))
    skip = loader(ShardSource(source, RRC, on_corrupt="skip"), reader, shuffle=False)
    keys = torch.cat([b["indices"] for b in skip])
    assert len(keys) == 35 and [name for name, _ in skip.skipped] == [str(bad)]
    assert capsys.readouterr().err.count("train-000001.tar") == 1
    with pytest.raises(UserError, match="process 0's shards ran out after 8 of the 10 batches of epoch 0"):
        list(loader(ShardSource(source, RRC, on_corrupt="skip"), reader, drop_last=True, batch_size=4))


def test_an_undecodable_image_is_named_or_left_out(tmp_path, capsys, reader):
    root = tmp_path / "tree"
    copy = write_imagenet_style(root, (4, 1), classes=2)
    write_unreadable(copy / "train" / "n00000001" / "zz_bad.JPEG", "truncated")
    files = list_folder(copy, "train")
    key = files.paths.index(str(copy / "train" / "n00000001" / "zz_bad.JPEG"))
    write_dataset(DataConfig(name="imagefolder", root=str(copy)), "train", tmp_path / "shards", shard_size=4, seed=1)
    source = list_shards(tmp_path / "shards", "train")
    with pytest.raises(UserError, match=rf"cannot read image {key:09d}.jpg of shard .*train-00000\d.tar: it is "
                                        "truncated"):
        list(loader(ShardSource(source, RRC), reader, batch_size=3))
    skip = loader(ShardSource(source, RRC, on_corrupt="skip"), reader, batch_size=3, num_workers=2)
    keys = torch.cat([b["indices"] for b in skip]).tolist()
    assert sorted(keys) == [k for k in range(9) if k != key]
    assert capsys.readouterr().err.count(f"{key:09d}.jpg") == 1


def test_other_formats_become_pngs_of_the_pixels_a_reader_sees(tmp_path):
    from pipelines.datasets.testing import photo_like, write_convertible, write_image_folder

    root = write_image_folder(tmp_path / "tree", photo_like(6, seed=2), np.arange(6) % 2, ext="bmp")
    write_convertible(root / "class_001" / "wide.png", "rgb16", photo_like(1, seed=3)[0])
    write_dataset(DataConfig(name="imagefolder", root=str(root)), "train", tmp_path / "shards", shard_size=4)
    got = [m for shard in sorted((tmp_path / "shards").glob("*.tar")) for m in members(shard)]
    assert [name.split(".")[1] for name, _ in got[::2]] == ["png"] * 7
    files = list_folder(root, "train")
    streamed = by_key(loader(StreamSource(files, RRC), shuffle=False))
    sharded = by_key(loader(ShardSource(list_shards(tmp_path / "shards", "train"), RRC), shuffle=False))
    assert all(torch.equal(image, streamed[key][0]) for key, (image, _) in sharded.items()) and len(sharded) == 7


# ---- DALI's reader against the torch reader

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def reference(files, keys: torch.Tensor, epoch: int) -> torch.Tensor:
    """``[B, 3, 32, 32]`` uint8: each key's window of its file, decoded whole by PIL (no
    reduced-scale read), as DALI decodes it."""
    return torch.stack([torch.from_numpy(read_image(files.paths[k], RRC, 32, seed=5, epoch=epoch, index=k,
                                                    draft=False).copy()).permute(2, 0, 1) for k in keys.tolist()])


@pytest.mark.parametrize("device", DEVICES)
def test_dali_gives_the_torch_readers_batches(tree, shards, device):
    """Rank by rank and epoch by epoch, the same keys and labels in the same batches; each
    image DALI's decode of the same window (the torch reader's reduced-scale JPEG read
    is close to it, PIL's whole decode closer still, up to DALI's resize)."""
    pytest.importorskip("nvidia.dali")
    files = list_folder(tree, "train")
    source = ShardSource(list_shards(shards, "train"), RRC, shuffle_buffer=9)
    for options in (dict(shard_id=0, num_shards=2, drop_last=True), dict(shard_id=1, num_shards=2, drop_last=True),
                    dict(shuffle=False, batch_size=7)):  # a short last batch
        dali, torch_reader = loader(source, "dali", device=device, **options), loader(source, **options)
        assert len(dali) == len(torch_reader)
        for epoch in (0, 1):
            dali.set_epoch(epoch), torch_reader.set_epoch(epoch)
            got, want = collect(dali), collect(torch_reader)
            assert len(got) == len(want) == len(dali)
            for a, b in zip(got, want):
                assert torch.equal(a["indices"], b["indices"]) and torch.equal(a["labels"], b["labels"])
                assert (a["images"].int() - b["images"].int()).abs().float().mean() < 3
                whole = (a["images"].int() - reference(files, a["indices"], epoch).int()).abs().float()
                assert whole.max() <= 8 and whole.mean() < 0.5, (whole.max(), whole.mean())
