"""Each process's stream of shard samples, cut into batches: the one order every backend's
shard reader delivers (``pipelines.torch_shards``, ``pipelines.dali.shards``).

    shard_order(count, seed, epoch, ...)      the shards process r reads in an epoch, in order
    shard_samples(path, expected, classes)    one shard's samples, checked; a Note if it ends early
    shuffled(items, size, gen)                a shuffle buffer of ``size`` samples
    epoch_batches(source, spec, epoch, n)     ``(j, rows, notes)`` of the epoch's batches
    shard_totals(source, spec)                samples of each process (the spec checked)
    noted(notes, source, skipped)             shards that ended early: named, or read past

An epoch of process ``r`` of ``P``: the listed shards put in an order drawn from (seed,
epoch) (listed order without ``shuffle``), of which ``r`` reads the shards listed at
``r, r + P, ...``, one after another, through a shuffle buffer of ``shuffle_buffer``
samples drawn from (seed, epoch, r); batches are cut from that stream in turn. With
``drop_last`` every process takes ``min over processes of (its samples // batch_size)``
batches (what data-parallel steps need). Nothing here decodes: a backend decodes each
batch's images, a sample's key (its position in the split) the index of its window.
"""

from __future__ import annotations

import sys
import tarfile
from typing import Iterator, NamedTuple

import torch

from pipelines.datasets.decode import shown
from pipelines.datasets.shards import IMAGE_EXTS, LABEL_EXT, samples
from pipelines.errors import UserError
from pipelines.sampling import generator
from pipelines.spec import LoaderSpec

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


def epoch_batches(source, spec: LoaderSpec, epoch: int, batches: int
                  ) -> Iterator[tuple[int, list[Sample] | None, list[Note]]]:
    """``(j, rows, notes)`` for each batch ``j < batches`` of process ``spec.shard_id``
    in ``epoch`` (module docstring): ``rows`` its samples (``spec.batch_size``; the last
    fewer without ``drop_last``), ``notes`` the shards that ended early while it was
    cut. ``rows`` None for the batch the stream ran out before (shards ended early)."""
    shards, s = source.shards, spec
    order = shard_order(len(shards.paths), s.seed, epoch, shuffle=s.shuffle, shard_id=s.shard_id,
                        num_shards=s.num_shards)
    stream = (item for i in order for item in shard_samples(shards.paths[i], shards.counts[i], len(source.classes)))
    buffer = source.shuffle_buffer if s.shuffle else 0
    j, rows, notes = 0, [], []
    for item in shuffled(stream, buffer, generator(s.seed, "buffer", epoch, s.shard_id)):
        if isinstance(item, Note):
            notes.append(item)
            continue
        rows.append(item)
        if len(rows) == s.batch_size:
            yield j, rows, notes
            j, rows, notes = j + 1, [], []
            if j == batches:
                return
    if j < batches:  # a last short batch, or the stream ran out
        yield j, rows if rows and not s.drop_last else None, notes


def shard_totals(source, spec: LoaderSpec) -> list[int]:
    """Samples of each of the ``spec.num_shards`` processes, once ``spec`` is checked
    against ``source`` (a ``pipelines.stream.ShardSource``): an image size, no subset or
    batch plan, a shard for every process, a batch for each with ``drop_last``."""
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
    totals = [sum(shards.counts[r::spec.num_shards]) for r in range(spec.num_shards)]
    if spec.drop_last and not num_batches(totals, spec):
        raise UserError(f"the shards of {shards.key} give one of the {spec.num_shards} processes "
                        f"{min(totals)} samples, fewer than a batch of {spec.batch_size}: lower the batch "
                        "or use fewer processes")
    return totals


def num_batches(totals: list[int], spec: LoaderSpec) -> int:
    """Batches of process ``spec.shard_id`` per epoch: with ``drop_last`` the fewest any
    process holds whole; else its own, the last one short."""
    if spec.drop_last:
        return min(totals) // spec.batch_size
    return -(-totals[spec.shard_id] // spec.batch_size)


def noted(notes: list[Note], source, skipped: list) -> None:
    """Shards that ended early: a one-line UserError naming the first, or
    (``source.on_corrupt = "skip"``) each named once on stderr and recorded in ``skipped``."""
    for shard, why in notes:
        if source.on_corrupt != "skip":
            raise UserError(f"shard {shown(shard)} {why}; {REWRITE_HINT}")
        if all(shard != n for n, _ in skipped):
            skipped.append((shard, why))
            print(f"data: read past shard {shown(shard)}: it {why} (data.on_corrupt = \"skip\")",
                  file=sys.stderr, flush=True)


def ran_out(spec: LoaderSpec, done: int, batches: int, epoch: int) -> UserError:
    """The error of a process whose stream gave ``done`` of its ``batches`` (``drop_last``)."""
    return UserError(f"process {spec.shard_id}'s shards ran out after {done} of the {batches} batches of "
                     f"epoch {epoch}: shards ended early (named above); write the shards again")
