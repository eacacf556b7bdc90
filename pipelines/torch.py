"""The plain-torch loader: uint8 arrays in memory, every transform batched on the device.

Per batch: index the uint8 dataset, move the ``[B, 3, H, W]`` uint8 batch to the
device (a quarter of the bytes of float32), then crop, flip, the localizable transform
and normalization as whole-batch tensor ops (``pipelines.augment``). No worker
processes, no per-sample Python.

    from pipelines.torch import make_loader
    loader = make_loader((images, labels), batch_size=128, device="cuda")
    for batch in loader:
        batch["images"], batch["target_rotation"], ...
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from pipelines.datasets import ArrayDataset
from pipelines.localizable import TASKS, check_tasks
from pipelines.augment import augment_batch
from pipelines.sampling import epoch_indices, generator, num_batches
from pipelines.sources import as_array_dataset

# Datasets up to this size are kept on the GPU whole (CIFAR is 150 MB): indexing there
# avoids a host-to-device copy per batch.
GPU_RESIDENT_BYTES = 4 << 30


class TorchLoader:
    """Iterable of G-SSL batches with ``len()`` (batches per epoch for this shard).

    Each iteration is one epoch; the epoch counter advances by itself, or is set with
    :meth:`set_epoch` (as with a ``DistributedSampler``). Batches are dicts (SPEC
    section 6): ``images`` ``[B, 3, H, W]`` (float32 normalized, or uint8), ``labels``,
    ``indices``, ``quadrant``, ``flip``, ``rotation``, ``perm`` and ``target_<task>``,
    all ``[B]`` int64 on ``device``.
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        *,
        batch_size: int,
        tasks: Sequence[str],
        augment: bool,
        normalize: bool,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        shard_id: int,
        num_shards: int,
        device: torch.device,
        crop_padding: int = 4,
        hflip: bool = True,
        flip_axis: str = "horizontal",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.tasks = check_tasks(tasks)
        self.augment, self.shuffle, self.drop_last = augment, shuffle, drop_last
        self.seed, self.shard_id, self.num_shards = seed, shard_id, num_shards
        self.device = device
        self.crop_padding, self.hflip, self.flip_axis = crop_padding, hflip, flip_axis
        self.normalize_to = (tuple(mean or dataset.mean), tuple(std or dataset.std)) if normalize else None
        self.epoch = 0
        self._images = _stage(dataset.images, device)  # [N, 3, H, W] uint8
        self._labels = torch.from_numpy(dataset.labels).to(self._images.device)
        len(self)  # validates the shard arguments now rather than at the first epoch

    def __len__(self) -> int:
        return num_batches(
            len(self.dataset),
            batch_size=self.batch_size,
            shard_id=self.shard_id,
            num_shards=self.num_shards,
            drop_last=self.drop_last,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        order = epoch_indices(
            len(self.dataset), seed=self.seed, epoch=epoch, shuffle=self.shuffle,
            shard_id=self.shard_id, num_shards=self.num_shards,
            drop_last=self.drop_last, batch_size=self.batch_size,
        )
        # One stream per (seed, shard, epoch): a run is reproducible per (seed, rank, step).
        gen = generator(self.seed, "augment", self.shard_id, epoch)
        for start in range(0, len(order), self.batch_size):
            yield self._batch(order[start : start + self.batch_size], gen)

    def _batch(self, idx: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        src = idx.to(self._images.device)
        images = self._images[src].to(self.device, non_blocking=True)
        out = augment_batch(
            images, tasks=self.tasks, generator=gen, augment=self.augment,
            normalize_to=self.normalize_to, padding=self.crop_padding, hflip=self.hflip, flip_axis=self.flip_axis,
        )
        out["labels"] = self._labels[src].to(self.device, non_blocking=True)
        out["indices"] = idx.to(self.device)
        return out


def _stage(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """``[N, H, W, 3]`` uint8 numpy -> ``[N, 3, H, W]`` uint8 tensor where batches are cut.

    On CUDA: on the GPU when it fits, else in pinned host memory for async copies.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    if device.type == "cuda":
        if x.numel() <= GPU_RESIDENT_BYTES:
            return x.to(device)
        return x.pin_memory()
    return x


def make_loader(
    source,
    *,
    batch_size: int,
    image_size: int | None = None,
    tasks: Sequence[str] = tuple(TASKS),
    augment: bool = True,
    normalize: bool = True,
    shuffle: bool = True,
    drop_last: bool = False,
    seed: int = 0,
    shard_id: int = 0,
    num_shards: int = 1,
    device: torch.device | str | None = None,
    split: str = "train",
    crop_padding: int = 4,
    hflip: bool = True,
    flip_axis: str = "horizontal",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> TorchLoader:
    """The loader contract of SPEC section 6 over in-memory uint8 data.

    source: ``(images [N, H, W, 3] uint8, labels [N] int)``, an ``ArrayDataset``, or a
    folder (ImageFolder or Tiny-ImageNet; ``split`` picks train or val there).
    device: where batches are delivered; None = CUDA when available, else CPU.
    crop_padding, hflip: the augmentation (with ``augment=True``): random crop with this
    zero padding (0 = none), whole-image horizontal flip.
    mean, std: normalization in [0, 1] units; None = the source's defaults (CIFAR
    statistics for a plain array pair).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dataset = as_array_dataset(source, image_size=image_size, split=split)
    return TorchLoader(
        dataset, batch_size=batch_size, tasks=tasks, augment=augment, normalize=normalize,
        shuffle=shuffle, drop_last=drop_last, seed=seed, shard_id=shard_id, num_shards=num_shards,
        device=torch.device(device), crop_padding=crop_padding, hflip=hflip, flip_axis=flip_axis,
        mean=mean, std=std,
    )
