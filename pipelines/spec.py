"""What every loader is asked for (docs/method.md section 6), checked once for every backend.

``pipelines.make_loader`` turns its keywords into a :class:`LoaderSpec`; each backend's
``build_loader(source, spec, **options)`` reads it. Backends differ in how they decode
and which ops they run natively, not in what they promise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from pipelines.errors import unknown_name
from pipelines.localizable import FLIP_AXES, TASKS, check_tasks
from pipelines.sampling import check_shard, epoch_indices, num_batches
from pipelines.views import DEFAULT_VIEW, View, check_views, standard_view


@dataclass(frozen=True)
class LoaderSpec:
    """batch_size: images per batch of this shard. views: ``{name: view}`` made of each
    image (``pipelines.views``). image_size: side of every image (None: the source's).
    normalize: float32 ``(x / 255 - mean) / std`` (mean, std in [0, 1] units; None =
    the source's defaults), else uint8 pixels. shuffle, drop_last, seed, shard_id,
    num_shards: the epoch's order and this process's share (``pipelines.sampling``).
    device: where batches are delivered. split: the split of a folder source.
    subset: ``[M]`` int64 dataset positions the loader draws from (a labeled subset,
    say), or None for every image; epochs shuffle, shard and batch the subset.
    plan: ``fn(epoch) -> [num_batches, batch_size * num_shards]`` int64 global batches of
    dataset positions (G-SimCLR's guided batches, ``pipelines.sampling.guided_batches``),
    each shard taking its slice of every one; None: shuffled or in order as above.
    decode: how a stream source's files are decoded (``pipelines.stream.Decode``), for
    this loader instead of the source's own (a centre crop to evaluate training images
    streamed with a random one); None: the source's."""

    batch_size: int
    views: tuple[tuple[str, View], ...]
    image_size: int | None
    normalize: bool
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    shuffle: bool
    drop_last: bool
    seed: int
    shard_id: int
    num_shards: int
    device: torch.device
    split: str
    subset: torch.Tensor | None = None
    plan: Any = None
    decode: Any = None

    def planned(self, epoch: int, shard_id: int) -> torch.Tensor:
        """``[num_batches * batch_size]`` this shard's slice of every planned global batch."""
        batches = torch.as_tensor(np_int64(self.plan(epoch)))
        b = self.batch_size
        if batches.dim() != 2 or batches.shape[1] != b * self.num_shards:
            raise ValueError(f"a batch plan must be [num_batches, {b * self.num_shards}] (batch_size x num_shards), "
                             f"got {tuple(batches.shape)}")
        return batches[:, shard_id * b : (shard_id + 1) * b].reshape(-1)

    def num_samples(self, n: int) -> int:
        """Images an epoch draws from, for a source of ``n`` images."""
        if self.plan is not None:
            return len(self.plan(0)) * self.batch_size * self.num_shards
        if self.subset is None:
            return n
        if len(self.subset) and not 0 <= int(self.subset.min()) <= int(self.subset.max()) < n:
            raise ValueError(f"subset holds positions outside the {n} images of the source "
                             f"({int(self.subset.min())}..{int(self.subset.max())})")
        return len(self.subset)

    def epoch_order(self, n: int, epoch: int, *, shard_id: int | None = None, num_shards: int | None = None,
                    drop_last: bool | None = None) -> torch.Tensor:
        """``[M]`` int64 dataset positions of this shard in ``epoch``, in order
        (``pipelines.sampling.epoch_indices`` over the subset); the spec's sharding unless
        given. A plan fixes the order of each shard (the spec's shard count)."""
        if self.plan is not None:
            if num_shards not in (None, self.num_shards):  # every shard's slice, one after another
                return torch.cat([self.planned(epoch, s) for s in range(self.num_shards)])
            return self.planned(epoch, self.shard_id if shard_id is None else shard_id)
        order = epoch_indices(self.num_samples(n), seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                              shard_id=self.shard_id if shard_id is None else shard_id,
                              num_shards=self.num_shards if num_shards is None else num_shards,
                              drop_last=self.drop_last if drop_last is None else drop_last, batch_size=self.batch_size)
        return order if self.subset is None else self.subset.index_select(0, order)

    def num_batches(self, n: int) -> int:
        """Batches per epoch of this shard for a source of ``n`` images."""
        if self.plan is not None:
            return len(self.plan(0))
        return num_batches(self.num_samples(n), batch_size=self.batch_size, shard_id=self.shard_id,
                           num_shards=self.num_shards, drop_last=self.drop_last)

    def normalize_to(self, default_mean, default_std):
        """``(mean, std)`` when normalizing, else None."""
        return (tuple(self.mean or default_mean), tuple(self.std or default_std)) if self.normalize else None


def make_spec(
    *,
    batch_size: int,
    image_size: int | None = None,
    views: Mapping[str, View] | None = None,
    tasks: Sequence[str] = tuple(TASKS),
    augment: bool = True,
    crop_padding: int = 4,
    hflip: bool = True,
    flip_axis: str = "horizontal",
    normalize: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    seed: int = 0,
    shard_id: int = 0,
    num_shards: int = 1,
    device: torch.device | str | None = None,
    split: str = "train",
    subset=None,
    plan=None,
    decode=None,
) -> LoaderSpec:
    """The keywords of ``make_loader``, checked. Without ``views``, one view called
    ``images``: crop with ``crop_padding`` and flip (``augment``, ``hflip``), then the
    localizable transform of ``tasks`` (``pipelines.views.standard_view``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
    if flip_axis not in FLIP_AXES:
        raise unknown_name("flip_axis", flip_axis, FLIP_AXES)
    check_shard(shard_id, num_shards)
    if views is None:
        views = {DEFAULT_VIEW: standard_view(augment=augment, padding=crop_padding, hflip=hflip,
                                             tasks=check_tasks(tasks), flip_axis=flip_axis)}
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if subset is not None:
        subset = torch.as_tensor(np_int64(subset))
        if subset.dim() != 1 or not len(subset):
            raise ValueError(f"subset must be a non-empty 1-D list of dataset positions, got shape {tuple(subset.shape)}")
        if len(torch.unique(subset)) != len(subset):
            raise ValueError("subset repeats a dataset position")
    return LoaderSpec(
        batch_size=batch_size, views=tuple(check_views(views).items()), image_size=image_size, normalize=normalize,
        mean=tuple(mean) if mean else None, std=tuple(std) if std else None, shuffle=shuffle, drop_last=drop_last,
        seed=seed, shard_id=shard_id, num_shards=num_shards, device=torch.device(device), split=split, subset=subset,
        plan=plan, decode=decode,
    )


def np_int64(values):
    """Any sequence of integers (list, numpy, tensor) as an int64 numpy array."""
    import numpy as np

    return np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values).astype(np.int64, casting="safe")
