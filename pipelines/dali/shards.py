"""The DALI backend's shard stream: WebDataset shards in the very batches of the torch
backend's shard reader, each sample's window decoded by DALI alone, then the views'
graphs as for folders and arrays (:mod:`pipelines.dali.graph`).

    from pipelines.dali import make_loader
    from pipelines.datasets.shards import list_shards
    from pipelines.stream import Decode, ShardSource
    source = ShardSource(list_shards("shards/train-{000000..000099}.tar"), Decode("random_resized"))
    loader = make_loader(source, batch_size=256, image_size=224, crop_padding=0, device="cuda",
                         shard_id=rank, num_shards=world_size, drop_last=True)

Per batch of ``pipelines.shard_stream.epoch_batches`` (process ``r``'s stream of the
epoch: its shards in the order drawn from (seed, epoch), through the shuffle buffer of
(seed, epoch, r), as many batches on every process with ``drop_last``):

    read ahead (a thread)        the next batches cut from the stream (``webdataset``'s
                                 tar iterators), each sample screened by its bytes
                                 (``pipelines.dali.source.probe``: its stored size, and
                                 whether DALI may be handed it; kept by key, so later
                                 epochs decode nothing before DALI does), its window from
                                 ``Decode.windows`` of (H, W, seed, epoch, key)
    fn.external_source           bytes, window start and shape, key, label
    fn.decoders.image_slice      the window alone ("mixed" on a GPU), then ``fn.resize``
                                 and the views' graphs (``pipelines.dali.stream``)

So both backends deliver the same keys, labels and windows in the same batches, a
function of (seed, epoch, r) alone, and a resumed run is bit-exact. A shard that ends
early and a sample that cannot be used are found as their batch is cut: named
(``on_corrupt = "error"``, up to ``pipelines.dali.loader.PREFETCH`` batches before its
own is due, as the pipeline reads ahead) or read past and left out (``"skip"``: the
lines and ``loader.skipped`` of the torch reader, ``pipelines.shard_stream.noted`` and
``pipelines.stream.left_out``).

Why not ``fn.readers.webdataset`` (which reads these shards with their ``.idx`` files):
its order is its own (samples, not whole shards, dealt to processes in contiguous
slices; its shuffle buffer drawn from the pipeline's seed), so it cannot give the torch
reader's batches; a random window must be known before the decode
(``image_slice`` takes it as an input) and depends on the sample's key, which that
reader gives only as a string (``source_info``: ``tar:offset:member``) to parse in
Python inside the graph; and a tar shorter than its index fails the whole pipeline as it
is built (an assertion on the member's offset), so a shard that ends early can neither
be read past nor named in a line. Feeding the bytes keeps DALI's decode (ROI, on the
GPU) and the one order every backend shares.
"""

from __future__ import annotations

import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipelines.dali.loader import DaliLoader
from pipelines.dali.source import probe
from pipelines.dali.stream import build_stream_pipeline
from pipelines.shard_stream import Sample, epoch_batches, noted, num_batches, ran_out, shard_totals
from pipelines.spec import LoaderSpec
from pipelines.stream import ShardSource, left_out

# Batches cut and screened ahead of the one handed to the pipeline.
READ_AHEAD = 2


class ShardScreen:
    """What the screen found of each sample of a source, by key, filled as samples are
    first fed: ``sizes`` ``{key: (height, width)}``, ``bad`` ``{key: what is wrong}``."""

    def __init__(self):
        self.sizes: dict[int, tuple[int, int]] = {}
        self.bad: dict[int, str] = {}

    def check(self, sample: Sample) -> tuple[int, int] | str:
        """``(height, width)`` of ``sample``'s image when DALI may decode it, else what is
        wrong with it (screened once: ``pipelines.dali.source.probe`` of its bytes)."""
        if sample.why is not None:
            return sample.why
        found = self.sizes.get(sample.key) or self.bad.get(sample.key)
        if found is None:
            found = probe(sample.data)
            (self.bad if isinstance(found, str) else self.sizes)[sample.key] = found
        return found


# One screen per source, shared by its loaders (a training loader and an evaluation one).
_SCREENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def screen_of(source: ShardSource) -> ShardScreen:
    if source not in _SCREENS:
        _SCREENS[source] = ShardScreen()
    return _SCREENS[source]


class DaliShardLoader(DaliLoader):
    """The DALI loader (:class:`~pipelines.dali.loader.DaliLoader`: ``len()``,
    ``set_epoch``, the batch dict, one pipeline per epoch) over a shard source (module
    docstring), decoded as ``spec.decode`` (None: the source's) says. ``skipped``:
    ``(name, what is wrong)`` of the samples and shards ``on_corrupt = "skip"`` left
    out so far."""

    def __init__(self, source: ShardSource, spec: LoaderSpec, *, size: tuple[int, int], normalize_to,
                 num_threads: int):
        self.totals = shard_totals(source, spec)  # the spec checked against the shards
        super().__init__(source, spec, size=size, normalize_to=normalize_to, num_threads=num_threads)
        self.source, self.decode, self.skipped = source, spec.decode or source.decode, []
        self.screen = screen_of(source)
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return num_batches(self.totals, self.spec)

    def _build(self, epoch: int):
        if self._pool is None:  # screens samples; PIL releases the GIL
            self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="dali-shards-screen")
        return build_stream_pipeline(self._feed(epoch), size=self.spec.image_size, labelled=True,
                                     interpolation=self.decode.interpolation, **self._pipeline_kwargs(epoch))

    def _feed(self, epoch: int):
        """The epoch's batches for ``fn.external_source`` (:meth:`_fed`): the next
        ``READ_AHEAD`` batches cut and screened in a thread of their own while this one
        is handed over. Ends early only where the stream does (shards read past)."""
        batches = epoch_batches(self.source, self.spec, epoch, len(self))

        def cut():  # one thread calls this, so the stream is read in order
            item = next(batches, None)
            if item is None or item[1] is None:
                return item
            return (*item, list(self._pool.map(self.screen.check, item[1])))

        reader = ThreadPoolExecutor(1, thread_name_prefix="dali-shards-read")
        ahead = deque()
        try:
            while True:
                while len(ahead) < READ_AHEAD:
                    ahead.append(reader.submit(cut))
                item = ahead.popleft().result()
                if item is None:
                    return
                j, rows, notes, *found = item
                noted(notes, self.source, self.skipped)
                if rows is None:  # the stream ran out: shards ended early and were read past
                    if self.spec.drop_last:
                        raise ran_out(self.spec, j, len(self), epoch)
                    return
                yield self._fed(epoch, rows, found[0])
        finally:
            reader.shutdown(wait=False, cancel_futures=True)

    def _fed(self, epoch: int, rows: list[Sample], found: list) -> tuple:
        """One batch for ``fn.external_source``: ``(bytes [n_i] uint8 per image, window
        start [b, 2] int32, window shape [b, 2] int32, keys [b] int64, labels [b] int64)``
        of the ``rows`` DALI may decode (``found``: each one's size, or what is wrong,
        which ``pipelines.stream.left_out`` names or records)."""
        kept = [r for r, f in enumerate(found) if not isinstance(f, str)]
        if len(kept) < len(rows):
            bad = [(rows[r].name, f) for r, f in enumerate(found) if isinstance(f, str)]
            left_out(bad, self.source, self.skipped, whole_batch=not kept)
        sizes = np.asarray([found[r] for r in kept], dtype=np.int64).reshape(-1, 2)
        keys = np.asarray([rows[r].key for r in kept], dtype=np.int64)
        windows = self.decode.windows(sizes[:, 0], sizes[:, 1], self.spec.seed, epoch, keys).astype(np.int32)
        encoded = [np.frombuffer(rows[r].data, dtype=np.uint8) for r in kept]
        labels = np.asarray([rows[r].label for r in kept], dtype=np.int64)
        return encoded, windows[:, :2].copy(), windows[:, 2:].copy(), keys, labels

