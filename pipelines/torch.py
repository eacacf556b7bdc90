"""The plain-torch loader: uint8 arrays in memory, every view batched on the device.

Per batch and view: one ``index_select`` takes the cropped and flipped uint8 batch
from the staged dataset (on the device when it fits there), then the view's other ops
and normalization run as whole-batch tensor ops (``pipelines.views``). No worker
processes, no per-sample Python.

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
from pipelines.augment import pad_and_mirror, read_windows
from pipelines.datasets import ArrayDataset
from pipelines.sampling import generator
from pipelines.sources import as_array_dataset
from pipelines.spec import LoaderSpec
from pipelines.views import CropFlip, apply_ops, finish_view

# Datasets up to this size are kept on the GPU whole (CIFAR is 150 MB): indexing there
# avoids a host-to-device copy per batch.
GPU_RESIDENT_BYTES = 4 << 30


class TorchLoader:
    """Iterable of batches with ``len()`` (batches per epoch for this shard).

    Each iteration is one epoch; the epoch counter advances by itself, or is set with
    :meth:`set_epoch` (as with a ``DistributedSampler``). Batches are dicts (docs/method.md
    section 6, ``pipelines.views``): each view's images and drawn parameters,
    ``labels`` and ``indices``, all on ``spec.device``.

    The dataset is staged once, zero-padded by the largest crop padding of the views and
    mirrored beside itself when a view flips, so that a view's crop and flip cost little
    more than taking the batch: each channel of each cropped, flipped image is one run of
    the staged data (its rows, a padded row apart), and one ``index_select`` of ``B x 3``
    run starts copies them (``pipelines.augment.read_windows``). The view's other ops
    then run batched on the device, the first of them in place on that fresh batch (the
    localizable transform works on its rows where they lie); the batch handed over is
    contiguous.
    """

    def __init__(self, dataset: ArrayDataset, spec: LoaderSpec):
        self.dataset, self.spec = dataset, spec
        self.batch_size = spec.batch_size
        self.normalize_to = spec.normalize_to(dataset.mean, dataset.std)
        self.epoch = 0
        crops = [view[0] for _, view in spec.views if view and isinstance(view[0], CropFlip)]
        # One staging serves the crops of one padding mode (the first view's); a view
        # cropping with another mode runs its crop as the batched op instead.
        self.mode = crops[0].mode if crops else "zeros"
        crops = [op for op in crops if op.mode == self.mode]
        self.padding = max((op.padding for op in crops), default=0)
        # [1 or 2, N, 3, H + 2p, W + 2p] uint8: the padded images, then their mirror images.
        self._images = _stage(dataset.images, spec.device, padding=self.padding,
                              mirrored=any(op.hflip for op in crops), mode=self.mode)
        self._labels = torch.from_numpy(dataset.labels).to(self._images.device)

    def __len__(self) -> int:
        return self.spec.num_batches(len(self.dataset))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, s = self.epoch, self.spec
        self.epoch += 1
        order = s.epoch_order(len(self.dataset), epoch)
        # One stream per (seed, shard, epoch): a run is reproducible per (seed, rank, step).
        gen = generator(s.seed, "augment", s.shard_id, epoch)
        for start in range(0, len(order), s.batch_size):
            yield self._batch(order[start : start + s.batch_size], gen)

    def _batch(self, idx: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        dev = self.spec.device
        src = idx.to(self._images.device)
        out = {"labels": self._labels.index_select(0, src).to(dev, non_blocking=True), "indices": idx.to(dev)}
        for name, view in self.spec.views:
            params, rest = {}, view
            if view and isinstance(view[0], CropFlip) and view[0].mode == self.mode:
                params, rest = view[0].draw(len(idx), gen), view[1:]
                top, left, shift = params["crop_y"], params["crop_x"], self.padding - view[0].padding
                if shift:  # the view's window in the staged padding
                    top, left = top + shift, left + shift
                images = self._windows(src, top, left, params["hflip"])
                params = {k: v.to(dev) for k, v in params.items()}
            else:
                images = self._windows(src, None, None, None)
            images, later = apply_ops(images.to(dev, non_blocking=True), rest, gen, owned=True)
            out.update(finish_view(name, images, {**params, **later}, normalize_to=self.normalize_to))
        return out

    def _windows(self, src: torch.Tensor, top, left, flip) -> torch.Tensor:
        """``[B, 3, H, W]`` uint8 windows of the staged images ``src`` (rows contiguous,
        ``read_windows``): at ``(top, left)`` of the padded image, mirrored where ``flip``
        is 1; the images as they are when ``top`` is None."""
        size = self.dataset.images.shape[1:3]
        if top is None:
            if not self.padding:
                return self._images[0].index_select(0, src)
            top = left = torch.full((len(src),), self.padding, dtype=torch.int64)
            flip = torch.zeros(len(src), dtype=torch.int64)
        return read_windows(self._images, src, top, left, flip, size)


def _stage(images: np.ndarray, device: torch.device, *, padding: int, mirrored: bool, mode: str) -> torch.Tensor:
    """``[N, H, W, 3]`` uint8 numpy -> ``[1 or 2, N, 3, H + 2p, W + 2p]`` uint8
    (``pipelines.augment.pad_and_mirror``) where batches are cut: on CUDA, on the GPU when
    it fits, else in pinned host memory for async copies.
    """
    staged = pad_and_mirror(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), padding,
                            mirrored=mirrored, mode=mode)
    if device.type == "cuda":
        return staged.to(device) if staged.numel() <= GPU_RESIDENT_BYTES else staged.pin_memory()
    return staged


def build_loader(source, spec: LoaderSpec, *, num_workers: int | None = None):
    """The torch loader of ``spec`` over an array pair, ``ArrayDataset`` or folder
    (decoded with PIL; normalization defaults: CIFAR statistics for a plain array
    pair, the dataset's own otherwise); over a ``StreamSource``, the stream
    (``pipelines.torch_stream``, ``num_workers`` decoding processes); over a
    ``ShardSource``, the shard stream (``pipelines.torch_shards``)."""
    from pipelines.stream import ShardSource, StreamSource

    if isinstance(source, StreamSource):
        from pipelines.torch_stream import StreamLoader

        return StreamLoader(source, spec, num_workers=num_workers)
    if isinstance(source, ShardSource):
        from pipelines.torch_shards import ShardLoader

        return ShardLoader(source, spec, num_workers=num_workers)
    return TorchLoader(as_array_dataset(source, image_size=spec.image_size, split=spec.split), spec)


def open_source(cfg, split: str):
    """``(source, dataset)`` of ``split`` of the recipe's data section ``cfg``: the
    shards with how to decode them for ``data.name = "webdataset"``, the files when
    ``cfg.stream`` (``pipelines.stream``), else the decoded ``ArrayDataset``
    (``pipelines.datasets.load_dataset``)."""
    from pipelines.stream import open_streamed

    source = open_streamed(cfg, split)
    if source is not None:
        return source, source
    from pipelines.datasets import load_dataset

    dataset = load_dataset(cfg, split)
    return dataset, dataset


make_loader = loader_factory("torch")
