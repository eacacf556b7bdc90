"""The DALI loader: the loader contract (docs/method.md section 6) over the pipelines of
:mod:`pipelines.dali.graph`, one pipeline per epoch."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from pipelines.dali.graph import (
    NATIVE,
    GraphOptions,
    build_array_pipeline,
    build_file_pipeline,
    dali_shard_size,
    graph_options,
    output_name,
    unpack_codes,
)
from pipelines.datasets import ArrayDataset, FileList
from pipelines.errors import UserError
from pipelines.localizable import PARAM_KEYS, pretext_targets
from pipelines.sampling import derive_seed, generator
from pipelines.sources import as_array_dataset
from pipelines.spec import LoaderSpec
from pipelines.system import usable_cores
from pipelines.views import apply_ops, finish_view, native_prefix

# Batches the pipeline prepares ahead of the one handed over.
PREFETCH = 2


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
    """Iterable of batches with ``len()`` (batches per epoch for this shard).

    Each iteration is one epoch with its own pipeline: the epoch fixes the sample order
    (one permutation of the dataset, the same on every shard) and the seed of the drawn
    parameters, so a run is reproducible per (seed, shard, epoch), and :meth:`set_epoch`
    works as with a ``DistributedSampler``. Each view runs its leading crop / flip /
    localizable ops in the DALI graph (``NATIVE``) and any later op as the batched torch
    op on the device right after the pipeline hands the batch over. Batches: each view's
    images and parameters (``pipelines.views``; ``crop_y``, ``crop_x`` are window offsets
    into the zero-padded image, ``0..2 * padding``), ``labels``, ``indices``; all on
    ``spec.device``.
    """

    def __init__(self, dataset: ArrayDataset | FileList, spec: LoaderSpec, *, size: tuple[int, int],
                 normalize_to, num_threads: int):
        self.dataset, self.spec, self.num_threads = dataset, spec, num_threads
        self.batch_size, self.device = spec.batch_size, spec.device
        self.epoch = 0
        self._labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64))
        self._files = isinstance(dataset, FileList)
        self.normalize_to = normalize_to
        # Per view: the graph of its native prefix and the ops left for torch.
        self.plans = {}
        for name, view in spec.views:
            k = native_prefix(view, NATIVE)
            opts = graph_options(view[:k], size=size, gpu=spec.device.type == "cuda",
                                 normalize=normalize_to if k == len(view) else None)
            self.plans[name] = (opts, view[k:])

    def __len__(self) -> int:
        b, s = self.batch_size, self.spec
        n = s.num_samples(len(self.dataset))
        if not self._files:
            return s.num_batches(len(self.dataset))
        if s.drop_last:  # the same count on every shard, from the smallest share
            return (n // s.num_shards) // b
        return -(-dali_shard_size(n, s.shard_id, s.num_shards) // b)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, s = self.epoch, self.spec
        self.epoch += 1
        pipe, names = self._build(epoch)
        pipe.build()
        share = dali_shard_size(s.num_samples(len(self.dataset)), s.shard_id, s.num_shards) if self._files else None
        gen = generator(s.seed, "augment", s.shard_id, epoch)  # the ops torch runs after the graph
        try:
            for i in range(len(self)):
                try:
                    outputs = dict(zip(names, pipe.run()))
                except StopIteration:  # a stream that ran out early (shards read past: "skip")
                    break
                except RuntimeError as e:
                    if not self._files:
                        raise
                    # The failing batch, or one the pipeline was reading ahead.
                    ahead = self._shard_files(epoch)[i * self.batch_size:(i + 1 + PREFETCH) * self.batch_size]
                    raise unreadable_file(e, ahead) from None
                # Reader batches are whole; past this shard's share they repeat its last file.
                keep = min(self.batch_size, share - i * self.batch_size) if self._files else None
                yield self._batch(outputs, keep, gen)
        finally:
            # Stop DALI's threads and free its buffers now, before the next epoch builds its
            # own. Left to the garbage collector (the pipeline object sits in reference
            # cycles), the shutdown runs wherever a collection happens to start, and one
            # starting inside numba's compiler (an FFCV loader's first epoch) segfaults.
            try:  # the last batch's copy out of DALI's GPU buffers may still be queued
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
            finally:
                pipe._shutdown()
                del pipe

    def _shard_files(self, epoch: int) -> list[str]:
        """The files this shard reads in ``epoch``, in order (:meth:`_build`'s slice)."""
        s, n = self.spec, len(self.dataset)
        order = s.epoch_order(n, epoch, shard_id=0, num_shards=1, drop_last=False).tolist()
        start = len(order) * s.shard_id // s.num_shards
        share = dali_shard_size(len(order), s.shard_id, s.num_shards)
        return [self.dataset.paths[i] for i in order[start:start + share]]

    def _pipeline_kwargs(self, epoch: int) -> dict:
        """What every pipeline of ``epoch`` is built with: the views' graphs and the
        ``nvidia.dali.Pipeline`` options (batch size, threads, device, the epoch's seed)."""
        s = self.spec
        return dict(
            views={name: opts for name, (opts, _) in self.plans.items()}, batch_size=self.batch_size,
            num_threads=self.num_threads, device_id=_cuda_index(self.device) if self.device.type == "cuda" else None,
            seed=derive_seed(s.seed, "dali", s.shard_id, epoch) % (1 << 31), prefetch_queue_depth=PREFETCH,
        )

    def _build(self, epoch: int):
        s, kwargs = self.spec, self._pipeline_kwargs(epoch)
        n = len(self.dataset)
        if self._files:
            # One permutation per epoch, the same on every shard; DALI deals contiguous slices.
            order = s.epoch_order(n, epoch, shard_id=0, num_shards=1, drop_last=False).tolist()
            files = [self.dataset.paths[i] for i in order]
            return build_file_pipeline(files, order, shard_id=s.shard_id, num_shards=s.num_shards, **kwargs)
        order = s.epoch_order(n, epoch)
        return build_array_pipeline(_array_batches(self.dataset.images, order, self.batch_size), **kwargs)

    def _batch(self, outputs: dict, keep: int | None, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Pipeline outputs -> the batch dict; ``keep`` cuts a reader batch to the real samples."""
        dev = self.device

        def take(name: str) -> torch.Tensor:
            return _to_torch(outputs[name], dev)[:keep]

        indices = take("indices").reshape(-1).to(torch.int64)
        # A source whose samples carry their labels (shards) feeds them; else looked up.
        labels = take("labels").reshape(-1).to(torch.int64) if "labels" in outputs else self._labels[indices]
        batch = {"labels": labels.to(dev, non_blocking=True), "indices": indices.to(dev)}
        for name, (opts, rest) in self.plans.items():
            params = {k: v.to(dev, non_blocking=True) for k, v in native_params(opts, name, take, outputs).items()}
            images, later = apply_ops(take(output_name(name, "images")).to(dev, non_blocking=True), rest, gen)
            batch.update(finish_view(name, images, {**params, **later},
                                     normalize_to=self.normalize_to if rest else None))
        return batch


def unreadable_file(error: RuntimeError, upcoming: list[str]) -> Exception:
    """A UserError naming the file behind DALI's ``error``: the file its message names,
    else the first of ``upcoming`` (the batches it was reading) PIL cannot read either;
    ``error`` itself when it is about no file (out of memory, say)."""
    from pipelines.datasets.decode import SKIP_HINT, first_unreadable, read_rgb, shown

    named = re.search(r"(?:Failed to decode sample #\d+ : |File mapping failed: )(\S+)", str(error))
    if named is not None:
        try:
            read_rgb(named.group(1), 1)
            found = (named.group(1), "cannot be decoded by DALI")
        except ValueError as e:
            found = (named.group(1), str(e))
    else:
        decoding = "decod" in str(error).lower() or "codec" in str(error).lower()
        if not decoding:
            return error
        found = first_unreadable(upcoming)
        if found is None:  # PIL reads every one of them: name the batch instead of a file
            return UserError(f"DALI could not decode one of the {len(upcoming)} images it was reading, from "
                             f"{shown(upcoming[0])} to {shown(upcoming[-1])}, which PIL reads; convert them to PNG "
                             f"or JPEG, or set train.loader = 'torch' ({str(error).splitlines()[0][:200]})")
    return UserError(f"cannot read image {shown(found[0])}: it {found[1]}; {SKIP_HINT}")


def native_params(opts: GraphOptions, view: str, take, outputs: dict) -> dict[str, torch.Tensor]:
    """The ``[B]`` int64 parameters the graph drew for ``view``: unpacked from its code
    and its crop window start (the order of docs/method.md section 1: crop, flip, localizable)."""
    code = output_name(view, "code")
    drawn = unpack_codes(take(code).reshape(-1), opts.fields) if code in outputs else {}
    params = {k: drawn[k] for k in PARAM_KEYS if k in drawn}
    if opts.tasks:
        params.update(pretext_targets(params, opts.tasks))
    if opts.augment:
        start_name = output_name(view, "crop_start")
        b = len(take("indices"))
        start = take(start_name).to(torch.int64) if start_name in outputs else torch.zeros(b, 2, dtype=torch.int64)
        offset = start + opts.padding  # window position in the zero-padded image
        params.update(crop_y=offset[:, 0], crop_x=offset[:, 1],
                      hflip=drawn.get("hflip", torch.zeros(b, dtype=torch.int64)))
    return params


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def default_threads() -> int:
    return max(1, min(usable_cores(), 8))


def resolve_source(source, image_size: int | None, split: str) -> ArrayDataset | FileList:
    """A folder or a ``FileList`` stays a list of files (DALI decodes them); anything
    else becomes in-memory arrays. A folder's files are screened first
    (:mod:`pipelines.dali.source`: a bad file is an error naming it, never a crash);
    a ``FileList`` is taken as screened."""
    if isinstance(source, FileList):
        return source
    if isinstance(source, (str, os.PathLike)):
        from pipelines.dali.source import screened
        from pipelines.datasets.cache import default_dir
        from pipelines.datasets.folders import list_folder

        return screened(list_folder(Path(source), split=split), cache_dir=default_dir())
    return as_array_dataset(source, image_size=image_size, split=split)
