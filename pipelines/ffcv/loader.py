"""The FFCV loader of the loader contract (SPEC section 6).

Per sample, in FFCV's thread: decode (raw copy or libjpeg-turbo) -> random crop with
padding and whole-image flip -> the localizable transform -> to a tensor -> to the
device -> ``[B, 3, H, W]`` -> normalization. A second pipeline, fed by the ``index``
field, emits the localizable parameters of each sample (``ops.LocalizableParams``).

Known FFCV behaviours handled here:
- ``Loader`` calls ``torch.set_num_threads`` with its worker count; the process's
  setting is restored after building and after starting each epoch.
- Batches are views of buffers FFCV reuses a few batches later: copy what you keep.
- The first epoch of a process compiles the pipeline (numba; several seconds): a line
  on stderr says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
from ffcv.loader import Loader
from ffcv.pipeline import PipelineSpec
from ffcv.transforms import ToDevice, ToTensor, ToTorchImage
from ffcv.traversal_order.base import TraversalOrder

from pipelines.errors import UserError, unknown_name
from pipelines.localizable import FLIP_AXES, PARAM_KEYS, TASKS, check_tasks, pretext_targets
from pipelines.ffcv.convert import check_beton, convert, read_info
from pipelines.ffcv.ops import ContiguousImage, EpochDraws, Localizable, LocalizableParams, RandomCropFlip
from pipelines.sampling import epoch_indices, num_batches
from pipelines.system import usable_cores

# Batches FFCV prepares ahead of the one being consumed.
BATCHES_AHEAD = 3
# FFCV's thread notices a stop request within half a second, after its current batch.
STOP_TIMEOUT_S = 30.0


class ShardOrder(TraversalOrder):
    """This shard's samples of an epoch, in order: ``pipelines.sampling.epoch_indices``.

    Every backend thus gives a process the same share of an epoch, and sharding needs
    no ``torch.distributed`` process group (FFCV's ``distributed=True`` reads the rank
    and world size from one). The epoch is the wrapper's (``set_epoch``), not FFCV's
    own count.
    """

    def __init__(self, n: int, *, seed: int, shuffle: bool, shard_id: int, num_shards: int,
                 drop_last: bool, batch_size: int):
        # No super().__init__: it reads these settings from a Loader, given here directly.
        self.n, self.epoch = n, 0
        self.plan = dict(seed=seed, shuffle=shuffle, shard_id=shard_id, num_shards=num_shards,
                         drop_last=drop_last, batch_size=batch_size)

    def __call__(self, loader) -> ShardOrder:
        return self  # FFCV instantiates an order object as ``order(loader)``

    def sample_order(self, epoch: int) -> np.ndarray:
        return epoch_indices(self.n, epoch=self.epoch, **self.plan).numpy().astype(np.uint64)


class FFCVLoader:
    """Iterable of G-SSL batches over a ``.beton`` with ``len()`` (batches per epoch for
    this shard); one epoch per iteration, or the epoch set by :meth:`set_epoch`.

    Batches (SPEC section 6): ``images`` ``[B, 3, H, W]`` (float32 normalized, or uint8),
    ``labels``, ``indices``, ``quadrant``, ``flip``, ``rotation``, ``perm`` and
    ``target_<task>``, all ``[B]`` int64, on ``device``. Parameters are a function of
    (seed, epoch, dataset index). Tensors are views of reused buffers: copy to keep.
    """

    def __init__(
        self,
        path: str | os.PathLike,
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
        image_size: int | None = None,
        crop_padding: int = 4,
        hflip: bool = True,
        flip_axis: str = "horizontal",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        num_workers: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if flip_axis not in FLIP_AXES:
            raise unknown_name("flip_axis", flip_axis, FLIP_AXES)
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        reader = check_beton(path)
        info = read_info(path)
        self.path, self.num_samples = Path(path), int(reader.num_samples)
        self.side = _image_side(reader)
        if image_size is not None and self.num_samples and image_size != self.side:
            raise UserError(f"{path} holds {self.side}x{self.side} images, not {image_size}x{image_size} "
                            "(data.image_size); convert the dataset again at that size")
        self.classes = info.get("classes")
        self.batch_size, self.tasks, self.drop_last = batch_size, check_tasks(tasks), drop_last
        self.shard_id, self.num_shards, self.device = shard_id, num_shards, device
        self.epoch = 0
        len(self)  # validates the shard arguments now rather than at the first epoch
        self.num_workers = num_workers or _default_workers()
        self.draws = EpochDraws(seed, self.tasks, crop_padding, hflip)
        self._order = ShardOrder(self.num_samples, seed=seed, shuffle=shuffle, shard_id=shard_id,
                                 num_shards=num_shards, drop_last=drop_last, batch_size=batch_size)
        normalize_to = (tuple(mean or info["mean"]), tuple(std or info["std"])) if normalize else None
        pipelines = self._pipelines(augment=augment, crop_padding=crop_padding, flip_axis=flip_axis,
                                    normalize_to=normalize_to)
        threads = torch.get_num_threads()
        try:
            self._loader = Loader(str(path), batch_size=batch_size, num_workers=self.num_workers,
                                  order=self._order, drop_last=drop_last, pipelines=pipelines, seed=seed,
                                  batches_ahead=BATCHES_AHEAD)
        finally:
            torch.set_num_threads(threads)
        self._outputs = list(self._loader.pipeline_specs)  # the order of FFCV's batch tuple
        self._compiled = False

    def _pipelines(self, *, augment, crop_padding, flip_axis, normalize_to) -> dict:
        """FFCV pipelines per output: ``image``, ``label``, ``index`` and, with tasks, ``params``."""

        def to_device() -> list:
            return [] if self.device.type == "cpu" else [ToDevice(self.device, non_blocking=True)]

        image = [SimpleRGBImageDecoder()]
        if augment:
            image.append(RandomCropFlip(self.draws, crop_padding))
        if self.tasks:
            image.append(Localizable(self.draws, flip_axis))
        # ToTorchImage(channels_last=True) is a free view; ContiguousImage writes the batch.
        image += [ToTensor(), *to_device(), ToTorchImage(channels_last=True), ContiguousImage(normalize_to)]
        pipelines = {
            "image": image,
            "label": [IntDecoder(), ToTensor(), *to_device()],
            "index": [IntDecoder(), ToTensor(), *to_device()],
        }
        if self.tasks:
            pipelines["params"] = PipelineSpec("index", transforms=[
                IntDecoder(), LocalizableParams(self.draws), ToTensor(), *to_device()])
        return pipelines

    def __len__(self) -> int:
        return num_batches(self.num_samples, batch_size=self.batch_size, shard_id=self.shard_id,
                           num_shards=self.num_shards, drop_last=self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        self._order.epoch = epoch
        self.draws.set_epoch(epoch)
        if not self._compiled and self.shard_id == 0:
            print(f"pipelines.ffcv: compiling the FFCV pipeline for {self.path.name} "
                  "(first epoch of this process, a few seconds)", file=sys.stderr, flush=True)
        threads = torch.get_num_threads()
        # FFCV makes its CUDA streams on the current device: make that the target one.
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            epoch_iterator = iter(self._loader)
        torch.set_num_threads(threads)
        try:
            for values in epoch_iterator:
                self._compiled = True
                yield self._batch(values)
        finally:
            # A consumer that leaves early must not leave FFCV's thread running into the
            # next epoch (or into another loader's numba code).
            epoch_iterator.close()
            epoch_iterator.join(timeout=STOP_TIMEOUT_S)

    def _batch(self, values) -> dict[str, torch.Tensor]:
        out = dict(zip(self._outputs, values))
        batch = {"images": out["image"], "labels": out["label"].view(-1), "indices": out["index"].view(-1)}
        if self.tasks:
            batch.update({k: out["params"][:, j] for j, k in enumerate(PARAM_KEYS)})
            batch.update(pretext_targets(batch, self.tasks))
        else:
            batch.update({k: torch.zeros_like(batch["labels"]) for k in PARAM_KEYS})
        return batch


def _image_side(reader) -> int:
    meta = reader.metadata[f"f{list(reader.handlers).index('image')}"]
    return int(meta["height"][0]) if len(meta) else 0


def _default_workers() -> int:
    """This process's share of the machine's cores (over ``LOCAL_WORLD_SIZE``), less one
    for the training loop: FFCV's parallel stages wait for all their threads, and on a
    machine with no core to spare they run several times slower."""
    return max(usable_cores() // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1) - 1, 1)


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
    num_workers: int | None = None,
) -> FFCVLoader:
    """The loader contract of SPEC section 6 over an FFCV ``.beton``.

    source: a ``.beton`` path (written by :func:`pipelines.ffcv.convert`), or any source
    of ``pipelines.sources`` (array pair, ``ArrayDataset``, folder; ``split`` picks the
    folder's split), converted to a temporary raw ``.beton`` that lives as long as the loader.
    device: where batches are delivered; None = CUDA when available, else CPU.
    crop_padding, hflip: the augmentation (with ``augment=True``): random crop with this
    zero padding, whole-image horizontal flip.
    mean, std: normalization in [0, 1] units; None = the values recorded by ``convert``.
    num_workers: FFCV threads; None = this process's share of the cores, less one.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    temp = None
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix == ".beton":
        path = Path(source)
    else:
        temp = tempfile.mkdtemp(prefix="gssl_ffcv_")
    try:
        if temp is not None:
            path = convert(source, Path(temp) / "data.beton", image_size=image_size, split=split)
        loader = FFCVLoader(
            path, batch_size=batch_size, tasks=tasks, augment=augment, normalize=normalize, shuffle=shuffle,
            drop_last=drop_last, seed=seed, shard_id=shard_id, num_shards=num_shards, device=torch.device(device),
            image_size=image_size, crop_padding=crop_padding, hflip=hflip, flip_axis=flip_axis, mean=mean, std=std,
            num_workers=num_workers,
        )
    except BaseException:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        raise
    if temp is not None:
        weakref.finalize(loader, shutil.rmtree, temp, ignore_errors=True)
    return loader
