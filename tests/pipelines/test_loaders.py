"""The loader contract (docs/method.md section 6), one test for every backend: torch, DALI, FFCV.

Every test builds its loader through ``pipelines.make_loader(..., backend=...)`` from
in-memory arrays (FFCV converts them to a temporary .beton) and checks the batches
against the reference torch ops of ``pipelines.views`` replayed with the parameters the
batch reports."""

from __future__ import annotations

import pytest
import torch

from pipelines import make_loader
from pipelines.augment import normalize
from pipelines.localizable import PARAM_KEYS
from pipelines.views import CropFlip, Grayscale, Localizable, standard_view, view_key
from tests.pipelines.loader_contract import (
    arrays,
    check_batch_format,
    check_label_balance,
    check_pixel_parity,
    check_shards,
    collect,
    replay,
)

ALL = ("rotation", "flip", "perm")


def loader(backend, data, **kw):
    if backend == "ffcv":
        kw.setdefault("num_workers", 1)
    return make_loader(data, backend=backend, **kw)


@pytest.mark.parametrize("side, flip_axis", [(32, "horizontal"), (64, "vertical")])
def test_pixel_parity_with_reference(backend, device, side, flip_axis):
    images, labels = arrays(200, side)
    batches = collect(loader(backend, (images, labels), batch_size=64, augment=False, normalize=False, seed=4,
                             flip_axis=flip_axis, device=device))
    assert len(batches) == 4
    check_batch_format(batches[0], batch_size=64, side=side, normalized=False)
    assert check_pixel_parity(batches, images, labels, flip_axis=flip_axis) == 200


@pytest.mark.parametrize("flip_axis", ["horizontal", "vertical"])
def test_augmented_images_replay_crop_flip_and_transform(backend, device, flip_axis):
    images, labels = arrays(256, 32)
    batches = collect(loader(backend, (images, labels), batch_size=128, normalize=False, crop_padding=4, seed=2,
                             flip_axis=flip_axis, device=device))
    view = standard_view(padding=4, tasks=ALL, flip_axis=flip_axis)
    src = torch.from_numpy(images).permute(0, 3, 1, 2)
    for b in batches:
        assert torch.equal(b["images"], replay(view, src[b["indices"]], b))
    draws = {k: torch.cat([b[k] for b in batches]) for k in ("crop_y", "crop_x", "hflip")}
    assert set(draws["crop_y"].tolist()) == set(draws["crop_x"].tolist()) == set(range(9))
    assert set(draws["hflip"].tolist()) == {0, 1}


def test_hflip_off_keeps_the_crops(backend, device):
    images, labels = arrays(128, 16)
    kw = dict(batch_size=64, normalize=False, seed=5, device=device, shuffle=False)
    on = collect(loader(backend, (images, labels), **kw))
    off = collect(loader(backend, (images, labels), hflip=False, **kw))
    src = torch.from_numpy(images).permute(0, 3, 1, 2)
    view = standard_view(padding=4, hflip=False, tasks=ALL)
    for a, b in zip(on, off):
        assert b["hflip"].eq(0).all() and a["hflip"].eq(1).any()
        assert torch.equal(a["crop_y"], b["crop_y"]) and torch.equal(a["crop_x"], b["crop_x"])
        assert torch.equal(b["images"], replay(view, src[b["indices"]], b))


def test_normalized_output_equals_normalized_uint8(backend, device):
    images, labels = arrays(96, 32)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    kw = dict(batch_size=48, seed=7, mean=mean, std=std, device=device)
    raw = collect(loader(backend, (images, labels), normalize=False, **kw))
    norm = collect(loader(backend, (images, labels), normalize=True, **kw))
    for r, n in zip(raw, norm):
        check_batch_format(n, batch_size=48, side=32, normalized=True)
        assert all(torch.equal(r[k], n[k]) for k in ("indices", *PARAM_KEYS, "crop_y", "hflip"))
        torch.testing.assert_close(n["images"], normalize(r["images"], mean, std), atol=1e-5, rtol=1e-5)


def test_pretext_labels_in_range_and_balanced(backend, device):
    images, labels = arrays(1200, 16)
    batches = collect(loader(backend, (images, labels), batch_size=100, drop_last=True, device=device))
    check_batch_format(batches[0], batch_size=100, side=16, normalized=True)
    check_label_balance(batches)


def test_shards_disjoint_and_cover(backend, device):
    images, labels = arrays(101, 16)
    check_shards(lambda s, n: loader(backend, (images, labels), batch_size=16, shard_id=s, num_shards=n,
                                     device=device), 101)


def test_epochs_differ_and_set_epoch_reproduces(backend, device):
    images, labels = arrays(64, 16)
    a = loader(backend, (images, labels), batch_size=32, seed=1, device=device)
    e0, e1 = collect(a), collect(a)
    assert not torch.equal(e0[0]["indices"], e1[0]["indices"])
    assert not torch.equal(e0[0]["quadrant"], e1[0]["quadrant"])
    b = loader(backend, (images, labels), batch_size=32, seed=1, device=device)
    b.set_epoch(1)
    assert all(torch.equal(e1[0][k], v) for k, v in collect(b)[0].items())


def test_last_partial_batch_and_drop_last(backend, device):
    images, labels = arrays(70, 16)
    keep = loader(backend, (images, labels), batch_size=32, device=device)
    assert len(keep) == 3 and [len(b["labels"]) for b in collect(keep)] == [32, 32, 6]
    drop = loader(backend, (images, labels), batch_size=32, device=device, drop_last=True)
    assert len(drop) == 2 and [len(b["labels"]) for b in collect(drop)] == [32, 32]
    shard = loader(backend, (images, labels), batch_size=16, device=device, drop_last=True, shard_id=1, num_shards=2)
    assert len(shard) == 2 and [len(b["labels"]) for b in collect(shard)] == [16, 16]


def test_subset_of_tasks_and_evaluation_loader(backend, device):
    images, labels = arrays(64, 16)
    b = collect(loader(backend, (images, labels), batch_size=64, tasks=("rotation",), device=device))[0]
    assert b["flip"].eq(0).all() and b["perm"].eq(0).all() and "target_flip" not in b
    assert b["rotation"].unique().numel() == 4
    val = collect(loader(backend, (images, labels), batch_size=64, tasks=(), augment=False, shuffle=False,
                         normalize=False, device=device))[0]
    assert torch.equal(val["images"].cpu(), torch.from_numpy(images).permute(0, 3, 1, 2))
    assert val["indices"].tolist() == list(range(64)) and "crop_y" not in val
    assert all(val[k].eq(0).all() for k in PARAM_KEYS)


VIEWS = {
    "images": standard_view(padding=4, tasks=ALL),
    # A native prefix (crop, flip, transform) then an op no backend graph has: torch runs it.
    "second": (CropFlip(2, True), Localizable(("rotation",), "vertical"), Grayscale(0.5)),
    "gray": (Grayscale(0.5),),
}


def test_several_views_each_replay_from_their_own_draws(backend, device):
    images, labels = arrays(96, 16)
    batches = collect(loader(backend, (images, labels), batch_size=32, views=VIEWS, normalize=False, seed=3,
                             device=device))
    src = torch.from_numpy(images).permute(0, 3, 1, 2)
    for b in batches:
        for name, view in VIEWS.items():
            assert b[name].shape == (32, 3, 16, 16) and b[name].dtype == torch.uint8
            assert torch.equal(b[name], replay(view, src[b["indices"]], b, name)), name
        assert "second/target_rotation" in b and "second/target_flip" not in b and b["gray/quadrant"].eq(0).all()
    # Each view draws its own parameters.
    first, second = (torch.cat([b[view_key(v, "quadrant")] for b in batches]) for v in ("images", "second"))
    assert not torch.equal(first, second)
    gray = torch.cat([b["gray/grayscale"] for b in batches])
    assert 0 < gray.sum() < len(gray)


def test_reflect_padded_crops_replay_from_their_parameters(backend, device):
    """FixMatch's weak view: DALI and FFCV hand reflect-padded crops to the torch op."""
    images, labels = arrays(64, 16)
    views = {"images": (CropFlip(4, True, mode="reflect"), Localizable(ALL)), "zeros": (CropFlip(4, True),)}
    batches = collect(loader(backend, (images, labels), batch_size=32, views=views, normalize=False, seed=5,
                             device=device))
    src = torch.from_numpy(images).permute(0, 3, 1, 2)
    for b in batches:
        for name, view in views.items():
            assert torch.equal(b[name], replay(view, src[b["indices"]], b, name)), name
    assert not torch.equal(batches[0]["images"], batches[0]["zeros"])


def test_a_subset_is_drawn_once_per_epoch_and_sharded(backend, device):
    images, labels = arrays(100, 16)
    subset = torch.tensor([3, 5, 8, 13, 21, 34, 55, 89, 1, 2, 60, 61])
    whole = loader(backend, (images, labels), batch_size=4, subset=subset, device=device, seed=2)
    assert len(whole) == 3
    seen = torch.cat([b["indices"].cpu() for b in collect(whole)])
    assert sorted(seen.tolist()) == sorted(subset.tolist())
    assert torch.equal(torch.cat([b["labels"].cpu() for b in collect(whole)]).sort().values,
                       torch.from_numpy(labels)[subset].sort().values)
    shards = [torch.cat([b["indices"].cpu() for b in collect(loader(
        backend, (images, labels), batch_size=2, subset=subset, shard_id=s, num_shards=2, drop_last=True,
        device=device))]) for s in range(2)]
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert set(shards[0].tolist()) | set(shards[1].tolist()) <= set(subset.tolist())
    with pytest.raises(ValueError, match="outside"):
        len(loader(backend, (images, labels), batch_size=4, subset=[1, 200], device=device))


def test_a_batch_plan_gives_every_shard_its_slice_of_each_global_batch(backend, device):
    """G-SimCLR's guided batches: the processes' batches together are the plan's."""
    import numpy as np

    from pipelines.sampling import guided_batches

    images, labels = arrays(100, 16)
    pseudo = np.arange(100) % 8

    def plan(epoch):
        return guided_batches(pseudo, 8, seed=3, epoch=epoch)

    for epoch in (0, 1):
        shards = []
        for s in range(2):
            ld = loader(backend, (images, labels), batch_size=4, plan=plan, shard_id=s, num_shards=2, device=device)
            assert len(ld) == 12
            ld.set_epoch(epoch)
            shards.append([b["indices"].cpu() for b in collect(ld)])
        together = torch.stack([torch.cat(pair) for pair in zip(*shards)])
        assert torch.equal(together, torch.from_numpy(plan(epoch)))


def test_ops_run_after_the_backend_are_normalized_too(backend, device):
    images, labels = arrays(64, 16)
    kw = dict(batch_size=32, views=VIEWS, seed=3, device=device, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    raw = collect(loader(backend, (images, labels), normalize=False, **kw))
    norm = collect(loader(backend, (images, labels), normalize=True, **kw))
    for r, n in zip(raw, norm):
        for name in VIEWS:
            assert n[name].dtype == torch.float32
            torch.testing.assert_close(n[name], normalize(r[name], (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)),
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=4, crop_padding=-1), "crop_padding"),
    (dict(batch_size=4, flip_axis="diagonal"), "flip_axis"),
    (dict(batch_size=4, tasks=("rotate",)), "rotation"),
    (dict(batch_size=4, shard_id=2, num_shards=2), "shard_id"),
    (dict(batch_size=4, views={}), "at least one view"),
    (dict(batch_size=4, views={"a/b": ()}), "without '/'"),
    (dict(batch_size=4, subset=[1, 1]), "repeats"),
])
def test_bad_arguments(backend, kwargs, match):
    images, labels = arrays(8, 16)
    with pytest.raises(ValueError, match=match):
        loader(backend, (images, labels), **kwargs)
