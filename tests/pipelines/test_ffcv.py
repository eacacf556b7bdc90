"""The FFCV backend against the loader contract (tests/pipelines/loader_contract.py).

Every new FFCV loader compiles its pipeline (a few seconds on a small CPU), so the
tests share the written .beton files and build few loaders; most use one FFCV thread
(serial numba code compiles faster).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv", reason="the ffcv extra is not installed (pip install -e .[ffcv])")

from gssl_fast.convert import main  # noqa: E402
from pipelines.augment import crop_with_padding, flip_images, normalize  # noqa: E402
from pipelines.errors import UserError  # noqa: E402
from pipelines.ffcv import convert, make_loader, read_info  # noqa: E402
from pipelines.ffcv.ops import EpochDraws, _draw_kernel  # noqa: E402
from pipelines.localizable import PARAM_KEYS  # noqa: E402
from tests.pipelines.loader_contract import (  # noqa: E402
    check_batch_format,
    check_label_balance,
    check_pixel_parity,
    collect,
)

ROOT = Path(__file__).resolve().parents[2]


def arrays(n, side, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8), rng.integers(0, classes, n)


@pytest.fixture(scope="module")
def data32(tmp_path_factory):
    images, labels = arrays(200, 32)
    return images, labels, convert((images, labels), tmp_path_factory.mktemp("ffcv") / "d32.beton")


@pytest.fixture(scope="module")
def data64(tmp_path_factory):
    images, labels = arrays(100, 64, seed=1)
    return images, labels, convert((images, labels), tmp_path_factory.mktemp("ffcv") / "d64.beton")


@pytest.mark.parametrize("dataset, flip_axis", [("data32", "horizontal"), ("data64", "vertical")])
def test_pixel_parity_with_reference(dataset, flip_axis, request):
    images, labels, path = request.getfixturevalue(dataset)
    side = images.shape[1]
    loader = make_loader(path, batch_size=48, augment=False, normalize=False, seed=4, flip_axis=flip_axis,
                         device="cpu", num_workers=1)
    batches = collect(loader)
    assert len(batches) == len(loader) == -(-len(labels) // 48)  # the last batch is partial
    check_batch_format(batches[0], batch_size=48, side=side, normalized=False)
    assert check_pixel_parity(batches, images, labels, flip_axis=flip_axis) == len(labels)
    indices = torch.cat([b["indices"] for b in batches])
    assert sorted(indices.tolist()) == list(range(len(labels)))
    assert not torch.equal(indices, torch.arange(len(labels)))  # shuffled
    params = torch.stack([torch.cat([b[k] for b in batches]) for k in PARAM_KEYS])
    for row, high in zip(params, (4, 2, 4, 6)):  # every value of every parameter occurs
        assert torch.equal(row.unique(), torch.arange(high))


def test_raw_round_trip_labels_indices_and_info(data32):
    images, labels, path = data32
    loader = make_loader(path, batch_size=64, tasks=(), augment=False, normalize=False, shuffle=False,
                         device="cpu", num_workers=1)
    batches = collect(loader)
    got = torch.cat([b["images"] for b in batches]).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(got, images)
    assert torch.equal(torch.cat([b["indices"] for b in batches]), torch.arange(200))
    assert np.array_equal(torch.cat([b["labels"] for b in batches]).numpy(), labels)
    assert all(b[k].eq(0).all() and "target_rotation" not in b for b in batches for k in PARAM_KEYS)
    info = read_info(path)
    assert info["num_samples"] == 200 and info["image_size"] == [32, 32] and info["mode"] == "raw"
    assert len(info["classes"]) == labels.max() + 1 and info["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])


def test_jpg_round_trip_is_close(tmp_path):
    from ffcv.reader import Reader

    # Smooth images (gradients), which JPEG keeps well, unlike noise.
    y, x = np.mgrid[0:32, 0:32]
    images = np.stack([np.stack([x * 4 + i, y * 4, 128 + 2 * (x - y)], -1) for i in range(40)]).astype(np.uint8)
    path = convert((images, np.arange(40) % 4), tmp_path / "jpg.beton", mode="jpg", jpeg_quality=95)
    assert read_info(path)["mode"] == "jpg"
    assert (Reader(str(path)).metadata["f0"]["mode"] == 0).all()  # FFCV's code of a JPEG sample
    loader = make_loader(path, batch_size=40, tasks=(), augment=False, normalize=False, shuffle=False,
                         device="cpu", num_workers=1)
    got = collect(loader)[0]["images"].permute(0, 2, 3, 1).numpy().astype(np.int16)
    err = np.abs(got - images.astype(np.int16))
    assert 0 < err.mean() < 3, err.mean()


def test_training_batches_crop_flip_and_normalization(tmp_path):
    """augment=True: each image is the crop and flip the draws name, then the localizable
    transform; normalize=True gives exactly pipelines.augment.normalize of those pixels."""
    images, labels = arrays(1200, 32, seed=2)
    path = convert((images, labels), tmp_path / "train.beton")
    common = dict(batch_size=100, seed=7, drop_last=True, device="cpu", num_workers=1)
    raw = make_loader(path, normalize=False, **common)
    normed = make_loader(path, **common)
    a, b = collect(raw), collect(normed)
    assert len(a) == len(raw) == 12
    check_batch_format(b[0], batch_size=100, side=32, normalized=True)
    check_label_balance(b)
    for x, y in zip(a, b):
        assert torch.equal(x["indices"], y["indices"]) and torch.equal(x["perm"], y["perm"])
        assert torch.equal(y["images"], normalize(x["images"], (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)))
    # The crop and flip of each sample, recomputed from the draws with the torch
    # backend's ops; the localizable transform on top uses the batch's own parameters.
    draws = EpochDraws(7, ("rotation", "flip", "perm"), crop_padding=4)
    augmented = images.copy()
    for batch in a:
        idx = batch["indices"]
        flip, cy, cx = torch.from_numpy(draws.crop_flip(idx.numpy().astype(np.uint64))).T
        src = torch.from_numpy(images[idx.numpy()]).permute(0, 3, 1, 2)
        augmented[idx.numpy()] = flip_images(crop_with_padding(src, cy, cx, 4), flip).permute(0, 2, 3, 1).numpy()
    assert check_pixel_parity(a, augmented, labels) == 1200


def test_epochs_seed_threads_and_early_stop(data32):
    """Epochs differ, set_epoch reproduces one, an epoch left early does not disturb the
    next, and the process keeps its torch thread count (FFCV sets its own)."""
    _, _, path = data32
    torch.set_num_threads(1)
    a = make_loader(path, batch_size=64, seed=1, device="cpu", num_workers=2)
    assert torch.get_num_threads() == 1
    e0 = collect(a)
    for i, _ in enumerate(a):  # epoch 1, left after one batch
        if i == 1:
            break
    e2 = collect(a)
    assert torch.get_num_threads() == 1
    assert not torch.equal(e0[0]["indices"], e2[0]["indices"])
    a.set_epoch(0)
    again = collect(a)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(e0, again) for k in x)


def test_draws_are_splitmix64_digits():
    def splitmix(key, index):
        m = (1 << 64) - 1
        z = (key + (index + 1) * 0x9E3779B97F4A7C15) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    highs = np.array([4, 2, 4, 6])
    idx = np.array([0, 1, 5, 2**40], dtype=np.uint64)
    got = _draw_kernel(12345, idx, highs, np.empty((4, 4), np.int64))
    for row, i in zip(got, idx):
        z, expect = splitmix(12345, int(i)), []
        for h in highs:
            expect.append(z % int(h))
            z //= int(h)
        assert row.tolist() == expect
    draws = EpochDraws(0, ("rotation",), crop_padding=4)
    params = draws.localizable(np.arange(5000, dtype=np.uint64))
    assert (params[:, 1] == 0).all() and (params[:, 3] == 0).all()  # flip, perm disabled
    draws.set_epoch(1)
    assert not np.array_equal(params, draws.localizable(np.arange(5000, dtype=np.uint64)))


def test_array_source_is_converted_to_a_temporary_beton():
    images, labels = arrays(30, 32)
    loader = make_loader((images, labels), batch_size=30, augment=False, normalize=False, device="cpu",
                         num_workers=1)
    temp = loader.path.parent
    assert temp.is_dir()
    assert check_pixel_parity(collect(loader), images, labels) == 30
    del loader
    assert not temp.exists()


def test_missing_or_mismatched_beton(tmp_path, data32):
    with pytest.raises(UserError, match="not found.*python -m gssl_fast.convert"):
        make_loader(tmp_path / "nope.beton", batch_size=8)
    (tmp_path / "junk.beton").write_bytes(b"not a beton")
    with pytest.raises(UserError, match="not a readable FFCV"):
        make_loader(tmp_path / "junk.beton", batch_size=8)
    with pytest.raises(UserError, match="32x32 images, not 64x64"):
        make_loader(data32[2], batch_size=8, image_size=64, device="cpu")
    with pytest.raises(UserError, match="must end in .beton"):
        convert(arrays(2, 8), tmp_path / "out.ffcv")


def test_command_line_writes_a_recipe_dataset(tmp_path, capsys):
    out = tmp_path / "sub" / "shapes.beton"
    assert main([str(ROOT / "recipes" / "demo.toml"), "--out", str(out), "--set", "data.train_size=300"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    info = read_info(out)
    assert info["num_samples"] == 300 and info["classes"][0] == "circle"


@pytest.mark.parametrize("args, message", [
    (["missing.toml", "--out", "x.beton"], "recipe file not found"),
    (["recipes/demo.toml", "--set", "data.name=cifar10", "--set", "data.root=/nonexistent", "--out", "x.beton"],
     "/nonexistent"),
    (["recipes/demo.toml"], "give --out"),
    (["recipes/demo.toml", "--out", "x.npy"], "must end in .beton"),
])
def test_command_line_user_errors(args, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.slow
def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "gssl_fast.convert", "missing.toml", "--out", "x.beton"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: recipe file not found")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_import_keeps_the_torch_thread_count():
    code = "import torch; torch.set_num_threads(2); import pipelines.ffcv; print(torch.get_num_threads())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "2", proc.stderr
