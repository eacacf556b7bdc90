"""The torch backend's shard stream: WebDataset shards read in order by worker processes,
decoded there (cropped at decode, ``pipelines.stream``), then every view batched on the
device as for the folder stream (``pipelines.torch_stream.batch_views``).

    from pipelines import make_loader
    from pipelines.datasets.shards import list_shards
    from pipelines.stream import Decode, ShardSource
    source = ShardSource(list_shards("shards/train-{000000..000099}.tar"), Decode("random_resized"))
    loader = make_loader(source, batch_size=256, image_size=224, crop_padding=0, device="cuda",
                         shard_id=rank, num_shards=world_size, drop_last=True)

An epoch of process ``r`` of ``P``: the listed shards put in an order drawn from (seed,
epoch) (listed order without ``shuffle``), of which ``r`` reads the shards listed at
``r, r + P, ...``, one after another, through a shuffle buffer of ``shuffle_buffer``
samples drawn from (seed, epoch, r); batches are cut from that stream in turn. The epoch
is a function of (seed, epoch, r) alone: every worker process reads the whole stream of
its process (the tar bytes, not the pixels) and decodes every ``W``-th batch, so the
number of workers changes nothing (the shards are read ``W`` times, from the page cache
after the first, as the workers move together). With ``drop_last`` every process yields
``min over processes of (its samples // batch_size)`` batches (what data-parallel steps
need): the rest of each process's stream, a different part each epoch, is dropped.
Each sample's key (its position in the split) is its ``indices`` entry and the index of
its random window, so shards give the images of the folder stream of the same files.
"""

from __future__ import annotations

import sys
import tarfile
from typing import Iterator, NamedTuple

import numpy as np
import torch

from pipelines.datasets.decode import shown
from pipelines.datasets.shards import IMAGE_EXTS, LABEL_EXT, samples
from pipelines.errors import UserError
from pipelines.sampling import generator
from pipelines.spec import LoaderSpec
from pipelines.stream import Decode, ShardSource, read_image
from pipelines.system import usable_cores
from pipelines.torch_stream import PREFETCH_BATCHES, _imagenet, _one_thread, batch_views, kept_rows

READ_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError)  # a tar that ends early or is not one
REWRITE_HINT = ("write the shards again (python -m gssl_fast.convert RECIPE --format webdataset), or set "
                "data.on_corrupt = \"skip\" to read on past it")


class Sample(NamedTuple):
    """One sample of a shard stream: ``key`` (-1 when unreadable), ``name`` (member and
    shard, for messages), the image's bytes, its label, and ``why`` it cannot be used
    (None: it can)."""

    key: int
    name: str
    data: bytes
    label: int
    why: str | None = None


class Note(NamedTuple):
    """A shard that ended early (or holds more than its listing says): passed at once."""

    shard: str
    why: str


def shard_order(count: int, seed: int, epoch: int, *, shuffle: bool, shard_id: int, num_shards: int) -> list[int]:
    """The listed positions of the shards process ``shard_id`` reads in ``epoch``, in
    reading order: those at ``shard_id, shard_id + num_shards, ...`` of the list, in the
    order of a permutation drawn from (seed, epoch) (list order without ``shuffle``)."""
    order = torch.randperm(count, generator=generator(seed, "shards", epoch)).tolist() if shuffle else range(count)
    return [i for i in order if i % num_shards == shard_id]


def shard_samples(path: str, expected: int, num_classes: int) -> Iterator[Sample | Note]:
    """The samples of the shard ``path`` (``pipelines.datasets.shards.samples``), each
    checked (an image member, a key, a label in ``[0, num_classes)``); a :class:`Note`
    last when it ends before the ``expected`` samples of its listing or holds more."""
    count, last = 0, "its start"
    try:
        for sample in samples(path):
            count, last = count + 1, f"sample {sample['__key__']}"
            yield _checked(sample, path, num_classes)
    except READ_ERRORS as e:
        why = str(e.args[0] if e.args else e).split(" @ ")[0]  # webdataset appends the stream object
        yield Note(path, f"ends early after {last} ({count} of its {expected} samples read): {why}")
        return
    if count != expected:
        ends = "ends early" if count < expected else "holds more samples than its listing says"
        yield Note(path, f"{ends}: {count} of {expected} samples, the last {last}")


def _checked(sample: dict, path: str, num_classes: int) -> Sample:
    exts = [e for e in IMAGE_EXTS if e in sample]
    name = f"{sample['__key__']}.{exts[0] if exts else IMAGE_EXTS[0]} of shard {path}"
    try:
        key = int(sample["__key__"])
    except ValueError:
        return Sample(-1, name, b"", 0, "has a key that is not a sample position")
    if not exts or LABEL_EXT not in sample:
        missing = f".{LABEL_EXT}" if exts else " or ".join(f".{e}" for e in IMAGE_EXTS)
        return Sample(key, name, b"", 0, f"has no {missing} member")
    try:
        label = int(sample[LABEL_EXT].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        label = -1
    if not 0 <= label < num_classes:
        return Sample(key, name, b"", 0, f"has a label that is not a class index below {num_classes}")
    return Sample(key, name, sample[exts[0]], label)


def shuffled(items: Iterator[Sample | Note], size: int, gen: torch.Generator) -> Iterator[Sample | Note]:
    """``items`` through a shuffle buffer of ``size`` samples: once full, each new sample
    takes the place of one drawn at random, which goes out; the rest go out in a drawn
    order at the end. Notes pass at once. The same items and ``gen`` give the same order."""
    buffer, draws = [], iter(())
    for item in items:
        if isinstance(item, Note) or size <= 1:
            yield item
        elif len(buffer) < size:
            buffer.append(item)
        else:
            slot = next(draws, None)
            if slot is None:
                draws = iter(torch.randint(size, (4096,), generator=gen).tolist())
                slot = next(draws)
            yield buffer[slot]
            buffer[slot] = item
    for slot in torch.randperm(len(buffer), generator=gen).tolist():
        yield buffer[slot]


class _Epoch(torch.utils.data.IterableDataset):
    """One epoch of one process, in each worker: items ``(j, images [b, S, S, 3] uint8,
    keys [b] int64, labels [b] int64, bad {row: (name, why)}, notes)`` of the batches
    ``j`` this worker decodes (every ``W``-th of ``batches``), ``notes`` the shards that
    ended early while batch ``j`` was cut; ``images`` None for the batch the stream ran
    out before."""

    def __init__(self, loader: ShardLoader, epoch: int):
        s, source = loader.spec, loader.source
        self.paths, self.counts = source.shards.paths, source.shards.counts
        self.order = shard_order(len(self.paths), s.seed, epoch, shuffle=s.shuffle, shard_id=s.shard_id,
                                 num_shards=s.num_shards)
        self.decode, self.size, self.seed, self.epoch = loader.decode, s.image_size, s.seed, epoch
        self.batch_size, self.batches, self.classes = s.batch_size, len(loader), len(source.classes)
        self.short_last = not s.drop_last  # a last batch of fewer samples
        self.buffer = source.shuffle_buffer if s.shuffle else 0
        self.gen_parts = (s.seed, "buffer", epoch, s.shard_id)

    def _stream(self) -> Iterator[Sample | Note]:
        for i in self.order:
            yield from shard_samples(self.paths[i], self.counts[i], self.classes)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        j, rows, notes = 0, [], []
        for item in shuffled(self._stream(), self.buffer, generator(*self.gen_parts)):
            if isinstance(item, Note):
                notes.append(item)
                continue
            rows.append(item)
            if len(rows) == self.batch_size:
                if j % workers == worker:
                    yield self._decoded(j, rows, notes)
                j, rows, notes = j + 1, [], []
                if j == self.batches:
                    return
        if j < self.batches and j % workers == worker:  # a last short batch, or the stream ran out
            yield self._decoded(j, rows, notes) if rows and self.short_last else (j, None, None, None, {}, notes)

    def _decoded(self, j: int, rows: list[Sample], notes: list[Note]):
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
        if spec.image_size is None:
            raise ValueError("shards need image_size: their images may have any size")
        if spec.subset is not None or spec.plan is not None:
            raise UserError("shards are read in order, one after another: a subset of the training images or a "
                            "batch plan (a method's labeled subset, guided batches) needs a folder stream "
                            "(data.name = \"imagefolder\" with data.stream = true)")
        shards = source.shards
        if len(shards.paths) < spec.num_shards:
            raise UserError(f"{shards.key} names {len(shards.paths)} shard{'s' * (len(shards.paths) != 1)}, fewer "
                            f"than the {spec.num_shards} processes, each of which reads whole shards: write smaller "
                            "shards (python -m gssl_fast.convert ... --shard-size) or use fewer processes")
        self.source, self.spec, self.dataset = source, spec, source
        self.decode: Decode = spec.decode or source.decode
        self.num_workers = max(usable_cores() - 1, 1) if num_workers is None else num_workers
        self.normalize_to = spec.normalize_to(*_imagenet())
        self.epoch, self.skipped = 0, []
        self.totals = [sum(shards.counts[r::spec.num_shards]) for r in range(spec.num_shards)]
        if spec.drop_last and not len(self):
            raise UserError(f"the shards of {shards.key} give one of the {spec.num_shards} processes "
                            f"{min(self.totals)} samples, fewer than a batch of {spec.batch_size}: lower the batch "
                            "or use fewer processes")

    def __len__(self) -> int:
        s = self.spec
        if s.drop_last:
            return min(self.totals) // s.batch_size
        return -(-self.totals[s.shard_id] // s.batch_size)

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
            self._noted(notes)
            if images is None:
                break
            images, keys, labels = kept_rows(bad, self.source, self.skipped, images, keys, labels)
            yield batch_views(images, keys, labels, s, gen, self.normalize_to)
            done += 1
        if done < len(self) and s.drop_last:
            raise UserError(f"process {s.shard_id}'s shards ran out after {done} of the {len(self)} batches of "
                            f"epoch {epoch}: shards ended early (named above); write the shards again")

    def _noted(self, notes: list[Note]) -> None:
        """Shards that ended early: a one-line UserError naming the first, or (``"skip"``)
        each named once on stderr and recorded in ``skipped``."""
        for shard, why in notes:
            if self.source.on_corrupt != "skip":
                raise UserError(f"shard {shown(shard)} {why}; {REWRITE_HINT}")
            if all(shard != n for n, _ in self.skipped):
                self.skipped.append((shard, why))
                print(f"data: read past shard {shown(shard)}: it {why} (data.on_corrupt = \"skip\")",
                      file=sys.stderr, flush=True)


def build_loader(source: ShardSource, spec: LoaderSpec, *, num_workers: int | None = None) -> ShardLoader:
    return ShardLoader(source, spec, num_workers=num_workers)
