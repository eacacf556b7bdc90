"""The FFCV loader of the loader contract (docs/method.md section 6).

Per sample, in FFCV's thread: decode (raw copy or libjpeg-turbo) -> random crop with
padding and whole-image flip -> the localizable transform -> to a tensor -> to the
device -> ``[B, 3, H, W]`` -> normalization, one such pipeline per view. Pipelines fed
by the ``index`` field emit the parameters drawn for each sample (``ops.DrawnParams``).
A stream's ``.beton`` (JPEG files at their own size, ``convert.convert_stream``) is
decoded by ``stream.WindowDecoder``: each image's window of ``pipelines.stream.Decode``
decoded and resized to ``image_size``, once for all the views.

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
from typing import Iterator

import numpy as np
import torch
from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
from ffcv.loader import Loader
from ffcv.pipeline import PipelineSpec
from ffcv.transforms import ToDevice, ToTensor, ToTorchImage
from ffcv.traversal_order.base import TraversalOrder

from pipelines import loader_factory, views
from pipelines.datasets.decode import shown
from pipelines.errors import UserError
from pipelines.ffcv.convert import STREAM_FORMAT, check_beton, convert, convert_stream, read_info
from pipelines.ffcv.ops import (
    ContiguousImage,
    DrawnParams,
    EpochDraws,
    Localizable,
    RandomCropFlip,
)
from pipelines.ffcv.stream import EpochWindows, WindowDecoder
from pipelines.localizable import PARAM_KEYS, pretext_targets
from pipelines.sampling import generator
from pipelines.spec import LoaderSpec
from pipelines.stream import Decode, StreamSource
from pipelines.system import usable_cores
from pipelines.views import apply_ops, finish_view, native_prefix

# The ops of pipelines.views this backend runs as FFCV operations, in their order; a
# view's later ops run as torch ops after FFCV (pipelines.views.native_prefix).
NATIVE = (views.zero_padded_crop, views.Localizable)

# Batches FFCV prepares ahead of the one being consumed.
BATCHES_AHEAD = 3
# FFCV's thread notices a stop request within half a second, after its current batch.
STOP_TIMEOUT_S = 30.0


class ShardOrder(TraversalOrder):
    """This shard's samples of an epoch, in order: ``LoaderSpec.epoch_order``.

    Every backend thus gives a process the same share of an epoch, and sharding needs
    no ``torch.distributed`` process group (FFCV's ``distributed=True`` reads the rank
    and world size from one). The epoch is the wrapper's (``set_epoch``), not FFCV's
    own count.
    """

    def __init__(self, n: int, spec: LoaderSpec):
        # No super().__init__: it reads these settings from a Loader, given here directly.
        self.n, self.spec, self.epoch = n, spec, 0

    def __call__(self, loader) -> ShardOrder:
        return self  # FFCV instantiates an order object as ``order(loader)``

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.spec.epoch_order(self.n, self.epoch).numpy().astype(np.uint64)


class FFCVLoader:
    """Iterable of batches over a ``.beton`` with ``len()`` (batches per epoch for this
    shard); one epoch per iteration, or the epoch set by :meth:`set_epoch`.

    Each view is one FFCV pipeline over the ``image`` field: its leading crop / flip /
    localizable ops (``NATIVE``) run as compiled FFCV operations with parameters that
    are a function of (seed, epoch, dataset index, view), reported by a second pipeline
    over ``index``; any later op runs as the batched torch op on the device right after
    FFCV hands the batch over. Batches: each view's images and parameters
    (``pipelines.views``), ``labels``, ``indices``; all on ``spec.device``. Tensors may be
    views of reused buffers: copy to keep.

    A stream's ``.beton``: each image decoded in its window of ``spec.decode``, else of
    the decode its JSON records (the source's), at ``spec.image_size``; ``windows``
    (``stream.EpochWindows``) draws them. ``skipped``: ``(path, what is wrong)`` of the
    files its conversion left out (``on_corrupt = "skip"``), never in a batch.
    """

    def __init__(self, path: str | os.PathLike, spec: LoaderSpec, *, num_workers: int | None = None):
        info = read_info(path)
        stream = info.get("format") == STREAM_FORMAT
        reader = check_beton(path, stream=stream)
        self.path, self.num_samples = Path(path), int(reader.num_samples)
        self.side, self.windows, self.skipped = _image_side(reader), None, []
        if stream:
            self._stream(reader, info, spec)
        elif spec.image_size is not None and self.num_samples and spec.image_size != self.side:
            raise UserError(f"{path} holds {self.side}x{self.side} images, not {spec.image_size}x{spec.image_size} "
                            "(data.image_size); convert the dataset again at that size")
        self.classes = info.get("classes")
        self.spec, self.batch_size, self.device = spec, spec.batch_size, spec.device
        self.epoch = 0
        len(self)  # validates the shard arguments now rather than at the first epoch
        self.num_workers = num_workers or _default_workers()
        self._order = ShardOrder(self.num_samples, spec)
        self.normalize_to = spec.normalize_to(info["mean"], info["std"])
        self.draws, self.view_tasks = [], {}  # EpochDraws of every view; the tasks of each view
        self.plans, pipelines = {}, {"label": self._ints(), "index": self._ints()}
        if stream:
            pipelines.update(height=None, width=None)  # the windows' input, not a batch entry
        for i, (name, view) in enumerate(spec.views):
            k = native_prefix(view, NATIVE)
            pipelines.update(self._view_pipelines(name, view[:k], normalize=k == len(view), first=i == 0))
            self.plans[name] = view[k:]
        threads = torch.get_num_threads()
        try:
            self._loader = Loader(str(path), batch_size=spec.batch_size, num_workers=self.num_workers,
                                  order=self._order, drop_last=spec.drop_last, pipelines=pipelines, seed=spec.seed,
                                  batches_ahead=BATCHES_AHEAD)
        finally:
            torch.set_num_threads(threads)
        self._outputs = list(self._loader.pipeline_specs)  # the order of FFCV's batch tuple
        self._compiled = False

    def _stream(self, reader, info: dict, spec: LoaderSpec) -> None:
        """Reads a stream's ``.beton``: its images' windows, its files left out."""
        if spec.image_size is None:
            raise ValueError("a stream needs image_size: its files may have any size")
        decode = spec.decode or Decode(**info["decode"])
        self.side, self.windows = spec.image_size, EpochWindows(decode, spec.image_size, spec.seed, reader)
        self.skipped = [(path, why) for _, path, why in info.get("skipped", [])]
        self._left_out = torch.tensor([i for i, _, _ in info.get("skipped", [])], dtype=torch.int64)

    def _to_device(self) -> list:
        return [] if self.device.type == "cpu" else [ToDevice(self.device, non_blocking=True)]

    def _ints(self) -> list:
        return [IntDecoder(), ToTensor(), *self._to_device()]

    def _view_pipelines(self, name: str, ops, *, normalize: bool, first: bool) -> dict:
        """FFCV pipelines of one view: its images (``ops``, a native prefix) and the
        parameters of each drawn op. The first view reads the ``image`` field's own
        pipeline; the others are extra pipelines from that field."""
        crop = next((op for op in ops if isinstance(op, views.CropFlip)), None)
        loc = next((op for op in ops if isinstance(op, views.Localizable)), None)
        draws = EpochDraws(self.spec.seed, loc.tasks if loc else (), crop.padding if crop else 0,
                           crop.hflip if crop else False, stream="" if first else name)
        self.draws.append(draws)
        if self.windows is None:
            image = [SimpleRGBImageDecoder()]
        elif first:  # decoded once: the other views read this decoder's batch
            self._decoded = WindowDecoder(self.windows, self.side)
            image = [self._decoded]
        else:
            image = []
        if crop:
            image.append(RandomCropFlip(draws, crop.padding))
        if loc:
            image.append(Localizable(draws, loc.flip_axis))
        # ToTorchImage(channels_last=True) is a free view; ContiguousImage writes the batch.
        image += [ToTensor(), *self._to_device(), ToTorchImage(channels_last=True),
                  ContiguousImage(self.normalize_to if normalize else None)]
        source = "image" if self.windows is None or first else self._decoded
        out = {"image" if first else f"{name}:image": image if first else PipelineSpec(source, transforms=image)}
        for op, kind in ((crop, "crop_flip"), (loc, "localizable")):
            if op is not None:
                out[f"{name}:{kind}"] = PipelineSpec("index", transforms=[
                    IntDecoder(), DrawnParams(draws, kind), ToTensor(), *self._to_device()])
        self.view_tasks[name] = loc.tasks if loc else ()
        return out

    def __len__(self) -> int:
        return self.spec.num_batches(self.num_samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        self._order.epoch = epoch
        for draws in self.draws:
            draws.set_epoch(epoch)
        if self.windows is not None:
            self.windows.set_epoch(epoch)
        gen = generator(self.spec.seed, "augment", self.spec.shard_id, epoch)  # the ops torch runs after FFCV
        if not self._compiled and self.spec.shard_id == 0:
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
                yield self._batch(values, gen)
        finally:
            # A consumer that leaves early must not leave FFCV's thread running into the
            # next epoch (or into another loader's numba code).
            epoch_iterator.close()
            epoch_iterator.join(timeout=STOP_TIMEOUT_S)

    def _batch(self, values, gen: torch.Generator) -> dict[str, torch.Tensor]:
        out = dict(zip(self._outputs, values))
        batch = {"labels": out["label"].view(-1), "indices": out["index"].view(-1)}
        for i, (name, rest) in enumerate(self.plans.items()):
            tasks, params = self.view_tasks[name], {}
            if f"{name}:crop_flip" in out:
                drawn = out[f"{name}:crop_flip"]
                params.update(hflip=drawn[:, 0], crop_y=drawn[:, 1], crop_x=drawn[:, 2])
            if f"{name}:localizable" in out:
                params.update({k: out[f"{name}:localizable"][:, j] for j, k in enumerate(PARAM_KEYS)})
                params.update(pretext_targets(params, tasks))
            images, later = apply_ops(out["image" if i == 0 else f"{name}:image"], rest, gen)
            batch.update(finish_view(name, images, {**params, **later}, normalize_to=self.normalize_to if rest else None))
        return self._kept(batch) if self.skipped else batch

    def _kept(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch less the files a stream's conversion left out (every entry is per sample)."""
        keep = ~torch.isin(batch["indices"], self._left_out.to(batch["indices"].device))
        if bool(keep.all()):
            return batch
        if not bool(keep.any()):
            raise UserError(f"every image of a batch was unreadable, e.g. {shown(self.skipped[0][0])}; "
                            "fix or remove those files")
        return {k: v[keep] for k, v in batch.items()}


def _image_side(reader) -> int:
    meta = reader.metadata[f"f{list(reader.handlers).index('image')}"]
    return int(meta["height"][0]) if len(meta) else 0


def _default_workers() -> int:
    """This process's share of the machine's cores (over ``LOCAL_WORLD_SIZE``), less one
    for the training loop: FFCV's parallel stages wait for all their threads, and on a
    machine with no core to spare they run several times slower."""
    return max(usable_cores() // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1) - 1, 1)


def build_loader(source, spec: LoaderSpec, *, num_workers: int | None = None) -> FFCVLoader:
    """The FFCV loader of ``spec``.

    source: a ``.beton`` path (written by :func:`pipelines.ffcv.convert` or
    :func:`~pipelines.ffcv.convert.convert_stream`), any source of ``pipelines.sources``
    (array pair, ``ArrayDataset``, folder; ``spec.split`` picks the folder's split),
    converted to a temporary raw ``.beton``, or a ``pipelines.stream.StreamSource``,
    written to a temporary JPEG ``.beton``; a temporary file lives as long as the loader.
    Normalization defaults: the values recorded by the conversion.
    num_workers: FFCV threads; None = this process's share of the cores, less one.
    """
    temp = None
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix == ".beton":
        path = Path(source)
    else:
        temp = tempfile.mkdtemp(prefix="gssl_ffcv_")
    try:
        if isinstance(source, StreamSource):
            path = convert_stream(source, Path(temp) / "data.beton")
        elif temp is not None:
            path = convert(source, Path(temp) / "data.beton", image_size=spec.image_size, split=spec.split)
        loader = FFCVLoader(path, spec, num_workers=num_workers)
    except BaseException:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        raise
    if temp is not None:
        weakref.finalize(loader, shutil.rmtree, temp, ignore_errors=True)
    return loader


make_loader = loader_factory("ffcv")
