"""The plain-torch loader: uint8 arrays in memory, every view batched on the device.

Per batch: index the uint8 dataset, move the ``[B, 3, H, W]`` uint8 batch to the
device (a quarter of the bytes of float32), then each view's ops and normalization as
whole-batch tensor ops (``pipelines.views``). No worker processes, no per-sample Python.

    from pipelines.torch import make_loader
    loader = make_loader((images, labels), batch_size=128, device="cuda")
    for batch in loader:
        batch["images"], batch["target_rotation"], ...
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pipelines import loader_factory
from pipelines.datasets import ArrayDataset
from pipelines.sampling import epoch_indices, generator, num_batches
from pipelines.sources import as_array_dataset
from pipelines.spec import LoaderSpec
from pipelines.views import apply_ops, finish_view

# Datasets up to this size are kept on the GPU whole (CIFAR is 150 MB): indexing there
# avoids a host-to-device copy per batch.
GPU_RESIDENT_BYTES = 4 << 30


class TorchLoader:
    """Iterable of batches with ``len()`` (batches per epoch for this shard).

    Each iteration is one epoch; the epoch counter advances by itself, or is set with
    :meth:`set_epoch` (as with a ``DistributedSampler``). Batches are dicts (SPEC
    section 6, ``pipelines.views``): each view's images and drawn parameters,
    ``labels`` and ``indices``, all on ``spec.device``.
    """

    def __init__(self, dataset: ArrayDataset, spec: LoaderSpec):
        self.dataset, self.spec = dataset, spec
        self.batch_size = spec.batch_size
        self.normalize_to = spec.normalize_to(dataset.mean, dataset.std)
        self.epoch = 0
        self._images = _stage(dataset.images, spec.device)  # [N, 3, H, W] uint8
        self._labels = torch.from_numpy(dataset.labels).to(self._images.device)

    def __len__(self) -> int:
        s = self.spec
        return num_batches(len(self.dataset), batch_size=s.batch_size, shard_id=s.shard_id,
                           num_shards=s.num_shards, drop_last=s.drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, s = self.epoch, self.spec
        self.epoch += 1
        order = epoch_indices(len(self.dataset), seed=s.seed, epoch=epoch, shuffle=s.shuffle, shard_id=s.shard_id,
                              num_shards=s.num_shards, drop_last=s.drop_last, batch_size=s.batch_size)
        # One stream per (seed, shard, epoch): a run is reproducible per (seed, rank, step).
        gen = generator(s.seed, "augment", s.shard_id, epoch)
        for start in range(0, len(order), s.batch_size):
            yield self._batch(order[start : start + s.batch_size], gen)

    def _batch(self, idx: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        src = idx.to(self._images.device)
        raw = self._images[src].to(self.spec.device, non_blocking=True)
        out = {"labels": self._labels[src].to(self.spec.device, non_blocking=True), "indices": idx.to(self.spec.device)}
        for name, view in self.spec.views:
            out.update(finish_view(name, *apply_ops(raw, view, gen), normalize_to=self.normalize_to))
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


def build_loader(source, spec: LoaderSpec) -> TorchLoader:
    """The torch loader of ``spec`` over an array pair, ``ArrayDataset`` or folder
    (decoded with PIL; normalization defaults: CIFAR statistics for a plain array
    pair, the dataset's own otherwise)."""
    return TorchLoader(as_array_dataset(source, image_size=spec.image_size, split=spec.split), spec)


make_loader = loader_factory("torch")
