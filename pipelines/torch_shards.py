"""The torch backend's shard stream: WebDataset shards read in order by worker processes,
decoded there (cropped at decode, ``pipelines.stream``), then every view batched on the
device as for the folder stream (``pipelines.torch_stream.batch_views``).

    from pipelines import make_loader
    from pipelines.datasets.shards import list_shards
    from pipelines.stream import Decode, ShardSource
    source = ShardSource(list_shards("shards/train-{000000..000099}.tar"), Decode("random_resized"))
    loader = make_loader(source, batch_size=256, image_size=224, crop_padding=0, device="cuda",
                         shard_id=rank, num_shards=world_size, drop_last=True)

An epoch of process ``r`` of ``P`` is the stream of ``pipelines.shard_stream`` (its shards
in a drawn order through a shuffle buffer, batches cut in turn; with ``drop_last`` as many
batches on every process), a function of (seed, epoch, r) alone: every worker process
reads the whole stream of its process (the tar bytes, not the pixels) and decodes every
``W``-th batch, so the number of workers changes nothing (the shards are read ``W``
times, from the page cache after the first, as the workers move together). Each
sample's key (its position in the split) is its ``indices`` entry and the index of its
random window, so shards give the images of the folder stream of the same files.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pipelines.sampling import generator
from pipelines.shard_stream import Sample, epoch_batches, noted, num_batches, ran_out, shard_totals
from pipelines.spec import LoaderSpec
from pipelines.stream import Decode, ShardSource, read_image
from pipelines.system import usable_cores
from pipelines.torch_stream import PREFETCH_BATCHES, _imagenet, _one_thread, batch_views, kept_rows


class _Epoch(torch.utils.data.IterableDataset):
    """One epoch of one process, in each worker: items ``(j, images [b, S, S, 3] uint8,
    keys [b] int64, labels [b] int64, bad {row: (name, why)}, notes)`` of the batches
    ``j`` this worker decodes (every ``W``-th of ``pipelines.shard_stream.epoch_batches``),
    ``notes`` the shards that ended early while batch ``j`` was cut; ``images`` None for
    the batch the stream ran out before."""

    def __init__(self, loader: ShardLoader, epoch: int):
        self.source, self.spec, self.batches = loader.source, loader.spec, len(loader)
        self.decode, self.size, self.seed, self.epoch = loader.decode, loader.spec.image_size, loader.spec.seed, epoch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for j, rows, notes in epoch_batches(self.source, self.spec, self.epoch, self.batches):
            if j % workers == worker:
                yield self._decoded(j, rows, notes) if rows is not None else (j, None, None, None, {}, notes)

    def _decoded(self, j: int, rows: list[Sample], notes: list):
        out = np.zeros((len(rows), self.size, self.size, 3), dtype=np.uint8)
        bad = {}
        for r, sample in enumerate(rows):
            why = sample.why
            if why is None:
                try:
                    out[r] = read_image(sample.data, self.decode, self.size, seed=self.seed, epoch=self.epoch,
                                        index=sample.key)
                except ValueError as e:
                    why = str(e)
            if why:
                bad[r] = (sample.name, why)
        keys = torch.tensor([s.key for s in rows], dtype=torch.int64)
        labels = torch.tensor([s.label for s in rows], dtype=torch.int64)
        return j, torch.from_numpy(out), keys, labels, bad, notes


class ShardLoader:
    """Iterable of batches with ``len()`` over a :class:`~pipelines.stream.ShardSource`
    (module docstring), the contract of every loader (``pipelines.make_loader``); each
    iteration is one epoch (``set_epoch``). ``num_workers``: decoding processes (0: in
    this process). ``skipped``: ``(name, what is wrong)`` of the samples and shards
    ``on_corrupt = "skip"`` left out so far."""

    def __init__(self, source: ShardSource, spec: LoaderSpec, *, num_workers: int | None = None):
        self.totals = shard_totals(source, spec)  # the spec checked against the shards
        self.source, self.spec, self.dataset = source, spec, source
        self.decode: Decode = spec.decode or source.decode
        self.num_workers = max(usable_cores() - 1, 1) if num_workers is None else num_workers
        self.normalize_to = spec.normalize_to(*_imagenet())
        self.epoch, self.skipped = 0, []

    def __len__(self) -> int:
        return num_batches(self.totals, self.spec)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, s = self.epoch, self.spec
        self.epoch += 1
        batches = _Epoch(self, epoch)
        if self.num_workers == 0:
            items = iter(batches)
        else:
            items = torch.utils.data.DataLoader(
                batches, batch_size=None, num_workers=min(self.num_workers, len(self)), worker_init_fn=_one_thread,
                pin_memory=s.device.type == "cuda", prefetch_factor=PREFETCH_BATCHES)
        gen = generator(s.seed, "augment", s.shard_id, epoch)
        done = 0
        for j, images, keys, labels, bad, notes in items:
            if j != done:
                raise RuntimeError(f"shard batches arrived out of order: {j} after {done - 1}")
            noted(notes, self.source, self.skipped)
            if images is None:
                break
            images, keys, labels = kept_rows(bad, self.source, self.skipped, images, keys, labels)
            yield batch_views(images, keys, labels, s, gen, self.normalize_to)
            done += 1
        if done < len(self) and s.drop_last:
            raise ran_out(s, done, len(self), epoch)


def build_loader(source: ShardSource, spec: LoaderSpec, *, num_workers: int | None = None) -> ShardLoader:
    return ShardLoader(source, spec, num_workers=num_workers)
