"""The DALI loader: the loader contract (SPEC section 6) over the pipelines of
:mod:`pipelines.dali.graph`, one pipeline per epoch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from pipelines.datasets import ArrayDataset, FileList
from pipelines.datasets.arrays import IMAGENET_MEAN, IMAGENET_STD
from pipelines.errors import unknown_name
from pipelines.localizable import FLIP_AXES, PARAM_KEYS, TASKS, check_tasks, pretext_targets
from pipelines.dali.graph import (
    GraphOptions,
    build_array_pipeline,
    build_file_pipeline,
    dali_shard_size,
    import_dali,
    unpack_codes,
)
from pipelines.sampling import check_shard, derive_seed, epoch_indices, num_batches
from pipelines.sources import as_array_dataset, image_side
from pipelines.system import usable_cores


def _array_batches(images: np.ndarray, order: torch.Tensor, batch_size: int):
    idx = order.numpy()
    for start in range(0, len(idx), batch_size):
        take = idx[start : start + batch_size]
        yield images[take], take.astype(np.int64)


def _to_torch(tensors, device: torch.device) -> torch.Tensor:
    """A uniform DALI TensorList (CPU or GPU) -> a new torch tensor; ``device`` is where
    a GPU list lands (a CPU list stays on the CPU)."""
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    on_gpu = hasattr(tensors, "device_id")
    dense = tensors.as_tensor()
    out = torch.empty(dense.shape(), dtype=to_torch_type[tensors.dtype], device=device if on_gpu else "cpu")
    # The copy is queued on torch's current stream, after the pipeline's work.
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device) if on_gpu else None)
    return out


# ---------------------------------------------------------------- the loader


class DaliLoader:
    """Iterable of G-SSL batches with ``len()`` (batches per epoch for this shard).

    Each iteration is one epoch with its own pipeline: the epoch fixes the sample order
    (one permutation of the dataset, the same on every shard) and the seed of the drawn
    parameters, so a run is reproducible per (seed, shard, epoch), and :meth:`set_epoch`
    works as with a ``DistributedSampler``. Batches: ``images`` ``[B, 3, H, W]`` (float32
    normalized, or uint8), ``labels``, ``indices``, ``quadrant``, ``flip``, ``rotation``,
    ``perm``, ``target_<task>``, and with augmentation ``crop_y``, ``crop_x`` (window
    offsets into the zero-padded image, ``0..2 * padding``) and ``hflip``; all ``[B]``
    int64 on ``device``.
    """

    def __init__(self, dataset: ArrayDataset | FileList, *, batch_size: int, opts: GraphOptions, shuffle: bool,
                 drop_last: bool, seed: int, shard_id: int, num_shards: int, device: torch.device,
                 num_threads: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        check_shard(shard_id, num_shards)
        self.dataset, self.batch_size, self.opts = dataset, batch_size, opts
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.shard_id, self.num_shards = shard_id, num_shards
        self.device, self.num_threads = device, num_threads
        self.epoch = 0
        self._labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64))
        self._files = isinstance(dataset, FileList)

    def __len__(self) -> int:
        n, b = len(self.dataset), self.batch_size
        if not self._files:
            return num_batches(n, batch_size=b, shard_id=self.shard_id, num_shards=self.num_shards,
                               drop_last=self.drop_last)
        if self.drop_last:  # the same count on every shard, from the smallest share
            return (n // self.num_shards) // b
        return -(-dali_shard_size(n, self.shard_id, self.num_shards) // b)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        pipe, names = self._build(epoch)
        pipe.build()
        share = dali_shard_size(len(self.dataset), self.shard_id, self.num_shards) if self._files else None
        try:
            for i in range(len(self)):
                outputs = dict(zip(names, pipe.run()))
                # Reader batches are whole; past this shard's share they repeat its last file.
                keep = min(self.batch_size, share - i * self.batch_size) if self._files else None
                yield self._batch(outputs, keep)
        finally:
            del pipe  # frees DALI's threads and buffers before the next epoch builds its own

    def _build(self, epoch: int):
        kwargs = dict(
            opts=self.opts, batch_size=self.batch_size, num_threads=self.num_threads,
            device_id=_cuda_index(self.device) if self.opts.gpu else None,
            seed=derive_seed(self.seed, "dali", self.shard_id, epoch) % (1 << 31), prefetch_queue_depth=2,
        )
        n = len(self.dataset)
        if self._files:
            # One permutation per epoch, the same on every shard; DALI deals contiguous slices.
            order = epoch_indices(n, seed=self.seed, epoch=epoch, shuffle=self.shuffle, shard_id=0,
                                  num_shards=1, drop_last=False, batch_size=self.batch_size).tolist()
            files = [self.dataset.paths[i] for i in order]
            return build_file_pipeline(files, order, shard_id=self.shard_id, num_shards=self.num_shards, **kwargs)
        order = epoch_indices(n, seed=self.seed, epoch=epoch, shuffle=self.shuffle, shard_id=self.shard_id,
                              num_shards=self.num_shards, drop_last=self.drop_last, batch_size=self.batch_size)
        return build_array_pipeline(_array_batches(self.dataset.images, order, self.batch_size), **kwargs)

    def _batch(self, outputs: dict, keep: int | None) -> dict[str, torch.Tensor]:
        """Pipeline outputs -> the batch dict; ``keep`` cuts a reader batch to the real samples."""
        dev = self.device

        def take(name: str) -> torch.Tensor:
            return _to_torch(outputs[name], dev)[:keep]

        indices = take("indices").reshape(-1).to(torch.int64)
        b = len(indices)
        drawn = unpack_codes(take("code").reshape(-1), self.opts.fields) if "code" in outputs else {}
        params = {k: drawn[k] if k in drawn else torch.zeros(b, dtype=torch.int64) for k in PARAM_KEYS}
        batch = {"labels": self._labels[indices], "indices": indices, **params}
        batch.update(pretext_targets(params, self.opts.tasks))
        if self.opts.augment:
            start = take("crop_start").to(torch.int64) if "crop_start" in outputs else torch.zeros(b, 2, dtype=torch.int64)
            offset = start + self.opts.padding  # window position in the zero-padded image
            batch.update(crop_y=offset[:, 0], crop_x=offset[:, 1], hflip=drawn["hflip"])
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        return {"images": take("images").to(dev, non_blocking=True), **batch}


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _default_threads() -> int:
    return max(1, min(usable_cores(), 8))


def _resolve(source, image_size: int | None, split: str) -> ArrayDataset | FileList:
    """A folder or a ``FileList`` stays a list of files (DALI decodes them); anything
    else becomes in-memory arrays."""
    if isinstance(source, FileList):
        return source
    if isinstance(source, (str, os.PathLike)):
        from pipelines.datasets.folders import list_folder

        return list_folder(Path(source), split=split)
    return as_array_dataset(source, image_size=image_size, split=split)


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
    num_threads: int | None = None,
) -> DaliLoader:
    """The loader contract of SPEC section 6 over a DALI pipeline.

    source: ``(images [N, H, W, 3] uint8, labels [N] int)`` or an ``ArrayDataset`` (fed
    from memory), or a folder (ImageFolder or Tiny-ImageNet; ``split`` picks train or
    val) or a ``FileList``, whose files DALI reads and decodes itself, resized to
    ``image_size`` (default: the first file's width).
    device: where batches are delivered; None = CUDA when available, else CPU. On CUDA
    the graph runs on that GPU (decoding "mixed"), on the CPU otherwise.
    mean, std: normalization in [0, 1] units; None = the source's defaults (ImageNet
    statistics for a folder).
    crop_padding, hflip: the augmentation (with ``augment=True``): random crop with this
    zero padding, whole-image horizontal flip.
    num_threads: DALI CPU worker threads; None = the cores this process may use, at most 8.
    """
    if flip_axis not in FLIP_AXES:
        raise unknown_name("flip_axis", flip_axis, FLIP_AXES)
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
    import_dali()
    tasks = check_tasks(tasks)
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    dataset = _resolve(source, image_size, split)
    if isinstance(dataset, FileList):
        side = image_size or image_side(dataset.paths[0])
        size, defaults = (side, side), (IMAGENET_MEAN, IMAGENET_STD)
    else:
        size, defaults = dataset.image_size, (dataset.mean, dataset.std)
    if tasks and (size[0] != size[1] or size[0] % 2):
        raise ValueError(f"the localizable transform needs square images with an even side, got {size[0]}x{size[1]}")
    opts = GraphOptions(
        size=size, tasks=tasks, augment=augment, padding=crop_padding, flip_axis=flip_axis,
        normalize=(tuple(mean or defaults[0]), tuple(std or defaults[1])) if normalize else None,
        gpu=device.type == "cuda", hflip=hflip,
    )
    return DaliLoader(dataset, batch_size=batch_size, opts=opts, shuffle=shuffle, drop_last=drop_last, seed=seed,
                      shard_id=shard_id, num_shards=num_shards, device=device,
                      num_threads=num_threads or _default_threads())
