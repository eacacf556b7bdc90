import time

import numpy as np
import pytest
import torch

from gssl_fast.config import DataConfig
from pipelines.datasets import CIFAR_MEAN, CIFAR_STD, DATASETS
from pipelines.datasets.shapes import CLASSES, make_shapes
from pipelines.errors import UserError
from pipelines.localizable import PERMUTATIONS, apply_localizable


def test_deterministic_from_seed_and_split():
    a, b = make_shapes(120, seed=3), make_shapes(120, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, make_shapes(120, seed=4).images)


def test_train_and_val_differ():
    train, val = make_shapes(200, split="train"), make_shapes(200, split="val")
    assert not np.array_equal(train.labels, val.labels)
    flat_train = {img.tobytes() for img in train.images}
    assert not any(img.tobytes() in flat_train for img in val.images)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_arrays(size):
    data = make_shapes(57, image_size=size)
    assert data.images.shape == (57, size, size, 3) and data.images.dtype == np.uint8
    assert data.images.flags.c_contiguous
    assert data.labels.shape == (57,) and data.labels.dtype == np.int64
    assert data.classes == CLASSES and len(set(CLASSES)) >= 10
    assert (data.mean, data.std) == (CIFAR_MEAN, CIFAR_STD)
    assert data.images.std() > 10  # not a blank canvas


def test_class_balance():
    counts = make_shapes(1005).class_counts()
    assert counts.shape == (len(CLASSES),) and counts.max() - counts.min() <= 1 and counts.sum() == 1005


def test_classes_are_shuffled():
    labels = make_shapes(100).labels
    assert not np.array_equal(labels, np.arange(100) % len(CLASSES))


@pytest.mark.parametrize("size", [15, 17, 8, 0])
def test_bad_size(size):
    with pytest.raises(ValueError, match="even"):
        make_shapes(4, image_size=size)


def test_registry_entry_uses_config():
    cfg = DataConfig(name="shapes", train_size=30, val_size=20, image_size=64, seed=5)
    val = DATASETS["shapes"](cfg, "val")
    np.testing.assert_array_equal(val.images, make_shapes(20, image_size=64, seed=5, split="val").images)
    assert len(DATASETS["shapes"](cfg, "train")) == 30


def test_registry_entry_rejects_small_size():
    with pytest.raises(UserError, match="data.image_size"):
        DATASETS["shapes"](DataConfig(image_size=12), "train")


def test_fast_enough():
    start = time.perf_counter()
    make_shapes(10000, image_size=32)
    assert time.perf_counter() - start < 3.0


def test_objects_stand_out_from_background():
    """Each image's object pixels (the class shape) differ from the surrounding background."""
    data = make_shapes(50, image_size=32, seed=2)
    img = data.images.astype(np.float32)
    # The object albedo has green / red below 0.62, the background above 0.7.
    green_ratio = img[..., 1] / np.maximum(img[..., 0], 1)
    object_pixels = (green_ratio < 0.66).sum(axis=(1, 2))
    assert object_pixels.min() >= 8 and object_pixels.max() < 0.5 * 32 * 32


def _decode_quadrant(quad: np.ndarray) -> tuple[int, int, int]:
    """(flip, rotation, perm) of one ``[r, r, 3]`` quadrant from its lighting alone.

    Channel permutation: the scene keeps red > green > blue everywhere. Flip and rotation:
    among the 8 candidate undo-transforms, the one after which brightness falls downward
    and blue / red grows rightward (medians of per-pixel differences, robust to edges).
    """
    x = quad.astype(np.float64) + 0.5
    rank = np.argsort(np.argsort(-np.median(x.reshape(-1, 3), axis=0)))
    perm = tuple(int(v) for v in rank)
    canon = np.empty_like(x)
    canon[..., list(perm)] = x
    best, best_score = None, -np.inf
    for f in range(2):
        for k in range(4):
            v = np.rot90(canon, -k, axes=(0, 1))  # undo torch.rot90(k, dims=(-2, -1)) on CHW
            v = v[:, ::-1] if f else v
            down = np.median(np.diff(np.log(v.sum(-1)), axis=0))
            right = np.median(np.diff(np.log(v[..., 2] / v[..., 0]), axis=1))
            if right - down > best_score:
                best, best_score = (f, k), right - down
    return best[0], best[1], PERMUTATIONS.index(perm)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_pretext_cues_in_every_quadrant(size):
    """A hand-written decoder reads the flip / rotation variant and the channel permutation
    of a single quadrant, in every quadrant position, from the scene's lighting and
    colour scheme: the cues a CNN needs are there, not only the quadrant seams."""
    data = make_shapes(60, image_size=size, seed=1, split="val")
    n, r = len(data), size // 2
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2)
    g = torch.Generator().manual_seed(0)
    hits = {"flip_rotation": 0, "perm": 0}
    for q in range(4):
        f, k, p = (torch.randint(m, (n,), generator=g) for m in (2, 4, 6))
        out = apply_localizable(images, quadrant=torch.full((n,), q), flip=f, rotation=k, perm=p)
        rows, cols = slice(r * (q // 2), r * (q // 2 + 1)), slice(r * (q % 2), r * (q % 2 + 1))
        quads = out.permute(0, 2, 3, 1).numpy()[:, rows, cols]
        for i in range(n):
            ff, kk, pp = _decode_quadrant(quads[i])
            hits["flip_rotation"] += (ff, kk) == (int(f[i]), int(k[i]))
            hits["perm"] += pp == int(p[i])
    assert hits["perm"] == 4 * n
    assert hits["flip_rotation"] >= 0.97 * 4 * n


def test_untransformed_quadrants_decode_to_identity():
    data = make_shapes(40, image_size=32, seed=7)
    for image in data.images:
        for q in range(4):
            quad = image[16 * (q // 2):16 * (q // 2 + 1), 16 * (q % 2):16 * (q % 2 + 1)]
            assert _decode_quadrant(quad)[2] == 0


@pytest.mark.slow
def test_small_cnn_learns_the_classes():
    torch.manual_seed(0)
    train, val = make_shapes(2000, seed=0), make_shapes(500, seed=0, split="val")

    def tensors(d):
        x = torch.from_numpy(d.images).permute(0, 3, 1, 2).float() / 255
        return (x - 0.5) / 0.25, torch.from_numpy(d.labels)

    (x, y), (xv, yv) = tensors(train), tensors(val)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, len(CLASSES)),
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(6):  # about 99% after 6 epochs, ~10 s on one core
        for idx in torch.randperm(len(y)).split(64):
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        accuracy = (net(xv).argmax(1) == yv).float().mean().item()
    assert accuracy > 0.8


@pytest.mark.slow
def test_small_cnn_reads_the_transform_of_a_lone_quadrant():
    """Given only a transformed 16 x 16 quadrant, a small CNN learns which of the 8
    flip / rotation variants and which of the 6 channel permutations was applied."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    def quadrants(data):
        x = torch.from_numpy(data.images).permute(0, 3, 1, 2)
        b = x.shape[0]
        q, f, k, p = (torch.randint(m, (b,), generator=g) for m in (4, 2, 4, 6))
        out = apply_localizable(x, quadrant=q, flip=f, rotation=k, perm=p).view(b, 3, 2, 16, 2, 16)
        quad = out[torch.arange(b), :, q // 2, :, q % 2, :]
        return (quad.float() / 255 - 0.5) / 0.25, 4 * f + k, p

    x, variant, perm = quadrants(make_shapes(3000, seed=0))
    xv, variant_v, perm_v = quadrants(make_shapes(500, seed=0, split="val"))
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.BatchNorm2d(64), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 16, 8 + 6),
    )
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(4):  # about 99% after 4 epochs
        for idx in torch.randperm(len(x)).split(64):
            out = net(x[idx])
            loss = torch.nn.functional.cross_entropy(out[:, :8], variant[idx]) + \
                torch.nn.functional.cross_entropy(out[:, 8:], perm[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        out = net(xv)
    assert (out[:, :8].argmax(1) == variant_v).float().mean() > 0.9
    assert (out[:, 8:].argmax(1) == perm_v).float().mean() > 0.9
