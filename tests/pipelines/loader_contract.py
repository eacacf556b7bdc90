"""Checks of the loader contract (docs/method.md section 6), shared by the backend tests.

Each takes a ``make_loader`` factory and a source, so the torch, DALI and FFCV tests
prove the same properties the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from pipelines.localizable import PARAM_KEYS, TASKS, apply_localizable

BATCH_KEYS = {"images", "labels", "indices", *PARAM_KEYS}


def arrays(n=300, side=32, classes=10, seed=0):
    """``(images [n, side, side, 3] uint8, labels [n])`` of random pixels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8), rng.integers(0, classes, n)


def replay(view, source: torch.Tensor, batch: dict, name: str = "images") -> torch.Tensor:
    """The reference of one view: its torch ops applied to ``source`` ``[B, 3, H, W]``
    uint8 with the parameters the batch reports for that view."""
    from pipelines.views import view_key

    images = source.contiguous()
    for op in view:
        images = op.apply(images, {k: batch[view_key(name, k)] for k in op.keys})
    return images


def collect(loader) -> list[dict]:
    """One epoch of batches, copied to the CPU (backends may reuse buffers)."""
    return [{k: v.detach().cpu().clone() for k, v in b.items()} for b in loader]


def check_batch_format(batch: dict, *, batch_size: int, side: int, normalized: bool, tasks=tuple(TASKS)) -> None:
    assert BATCH_KEYS <= set(batch), set(batch)
    assert {f"target_{t}" for t in tasks} <= set(batch)
    images = batch["images"]
    assert images.shape == (batch_size, 3, side, side), images.shape
    assert images.dtype == (torch.float32 if normalized else torch.uint8)
    for k in BATCH_KEYS - {"images"}:
        assert batch[k].dtype == torch.int64 and batch[k].shape == (batch_size,), k
    assert batch["quadrant"].min() >= 0 and batch["quadrant"].max() < 4
    assert batch["rotation"].max() < 4 and batch["flip"].max() < 2 and batch["perm"].max() < 6
    if "rotation" in tasks:
        assert torch.equal(batch["target_rotation"], 4 * batch["quadrant"] + batch["rotation"])


def check_pixel_parity(batches: list[dict], images_nhwc: np.ndarray, labels: np.ndarray, flip_axis="horizontal") -> int:
    """With augment=False, normalize=False: every image equals apply_localizable of its
    own source image and parameters. Returns the number of images checked."""
    src = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)
    n = 0
    for b in batches:
        idx = b["indices"]
        expect = apply_localizable(src[idx], **{k: b[k] for k in PARAM_KEYS}, flip_axis=flip_axis)
        mismatch = (b["images"] != expect).flatten(1).any(1)
        assert not mismatch.any(), f"pixel mismatch at dataset indices {idx[mismatch].tolist()[:10]}"
        assert torch.equal(b["labels"], torch.from_numpy(labels[idx.numpy()]).long())
        n += len(idx)
    return n


def check_shards(make_shard, n: int, num_shards: int = 2) -> None:
    """``make_shard(shard_id, num_shards)`` -> loader with drop_last=False; the shards'
    indices are disjoint and cover ``range(n)``, and ``len()`` counts the batches."""
    seen = []
    for s in range(num_shards):
        loader = make_shard(s, num_shards)
        batches = collect(loader)
        assert len(batches) == len(loader)
        seen.append(torch.cat([b["indices"] for b in batches]))
    joined = torch.cat(seen)
    assert len(set(joined.tolist())) == len(joined), "shards overlap or repeat samples"
    assert sorted(joined.tolist()) == list(range(n)), "shards do not cover the dataset"


def check_label_balance(batches: list[dict], tasks=tuple(TASKS)) -> None:
    """Pseudo-labels in range and roughly uniform."""
    for t in tasks:
        y = torch.cat([b[f"target_{t}"] for b in batches])
        counts = torch.bincount(y, minlength=TASKS[t])
        assert len(counts) == TASKS[t], t
        expect = len(y) / TASKS[t]
        assert counts.min() > 0.5 * expect and counts.max() < 1.5 * expect, (t, counts.tolist())
