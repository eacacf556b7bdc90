"""The DALI backend's stream: a :class:`~pipelines.stream.StreamSource` read every epoch,
each file decoded only in its window (DALI's ROI decode, "mixed" on a GPU), then the
views' graphs as for folders and arrays (:mod:`pipelines.dali.graph`).

    from pipelines.dali import make_loader
    from pipelines.stream import Decode, StreamSource
    source = StreamSource(files, Decode("random_resized"))      # files: a FileList
    loader = make_loader(source, batch_size=256, image_size=224, crop_padding=0, device="cuda")

Per batch of this shard's positions (``spec.epoch_order``):

    feed (this process, a thread pool)   each file screened the first time it is fed
                                         (``pipelines.dali.source.probe``: its stored size,
                                         and whether DALI may be handed it), its bytes read,
                                         its window from ``Decode.windows`` (of H, W, seed,
                                         epoch, index), the rule every backend's stream shares
    fn.external_source                   bytes ``[n]`` uint8, window start and shape ``[2]``
                                         int32 ``(row, col)``, index int64
    fn.decoders.image_slice              the window alone, RGB, EXIF orientation ignored
                                         (the window is of the stored image, as PIL reads it)
    fn.resize                            ``S x S``, linear, antialiased
    the views' graphs                    crop / flip / localizable transform, as today

So the windows are a function of (seed, epoch, index) and a resumed run decodes the
same ones. A bad file is found as its batch is fed, never in a pass over every file
before training: ``on_corrupt = "error"`` stops with a line naming it (as the
pipeline reads ahead: up to ``pipelines.dali.loader.PREFETCH`` batches before its own
batch is due), ``"skip"`` leaves it out of its batch (``loader.skipped``, a line on
stderr). What the screen found of each file (its size, or what is wrong) is kept in
memory for the source, so later epochs, and other loaders of the same source, read
nothing but the bytes.
"""

from __future__ import annotations

import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipelines.dali.graph import import_dali, view_graphs
from pipelines.dali.loader import DaliLoader
from pipelines.dali.source import probe
from pipelines.datasets.decode import problem
from pipelines.spec import LoaderSpec
from pipelines.stream import StreamSource, left_out


class Screen:
    """What the screen found of each file of a source, filled as files are first fed:
    ``sizes`` ``[N, 2]`` int32 ``(height, width)`` (-1 not screened yet), ``bad``
    ``{position: what is wrong}``."""

    def __init__(self, paths: tuple[str, ...]):
        self.paths = paths
        self.sizes = np.full((len(paths), 2), -1, dtype=np.int32)
        self.bad: dict[int, str] = {}

    def read(self, i: int) -> bytes | None:
        """The bytes of file ``i`` when DALI may decode it (screened first, once); None
        when it may not (``bad[i]`` says why)."""
        if self.sizes[i, 0] < 0 and i not in self.bad:
            found = probe(self.paths[i])
            if isinstance(found, str):
                self.bad[i] = found
            else:
                self.sizes[i] = found
        if i in self.bad:
            return None
        try:
            with open(self.paths[i], "rb") as f:
                return f.read()
        except OSError as e:
            self.bad[i] = problem(self.paths[i], e)
            return None


# One screen per source, shared by its loaders (a training loader and an evaluation one).
_SCREENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def screen_of(source: StreamSource) -> Screen:
    if source not in _SCREENS:
        _SCREENS[source] = Screen(source.files.paths)
    return _SCREENS[source]


class DaliStreamLoader(DaliLoader):
    """The DALI loader (:class:`~pipelines.dali.loader.DaliLoader`: ``len()``,
    ``set_epoch``, the batch dict, one pipeline per epoch) over a stream source: each
    epoch's positions of this shard (``spec.epoch_order``) fed batch by batch, decoded
    as ``spec.decode`` (None: the source's) says. ``skipped``: ``(path, what is
    wrong)`` of the files ``on_corrupt = "skip"`` left out so far."""

    def __init__(self, source: StreamSource, spec: LoaderSpec, *, size: tuple[int, int], normalize_to,
                 num_threads: int):
        super().__init__(source, spec, size=size, normalize_to=normalize_to, num_threads=num_threads)
        self.source, self.decode, self.skipped = source, spec.decode or source.decode, []
        self.screen = screen_of(source)
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return self.spec.num_batches(len(self.source))

    def _build(self, epoch: int):
        if self._pool is None:  # reads and screens files; PIL and file reads release the GIL
            self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="dali-stream-feed")
        return build_stream_pipeline(self._feed(epoch), size=self.spec.image_size,
                                     interpolation=self.decode.interpolation, **self._pipeline_kwargs(epoch))

    def _feed(self, epoch: int):
        """The epoch's batches for ``fn.external_source`` (:meth:`_fed`), the files of
        the next batch read while this one is handed over."""
        s = self.spec
        order = s.epoch_order(len(self.source), epoch).tolist()
        batches = deque(order[i:i + s.batch_size] for i in range(0, len(order), s.batch_size))
        reading = deque()
        while batches or reading:
            while batches and len(reading) < 2:  # this batch and the next
                positions = batches.popleft()
                reading.append((positions, [self._pool.submit(self.screen.read, i) for i in positions]))
            positions, futures = reading.popleft()
            yield self._fed(epoch, positions, [f.result() for f in futures])

    def _fed(self, epoch: int, positions: list[int], data: list) -> tuple:
        """One batch for ``fn.external_source``: ``(bytes [n_i] uint8 per file, window
        start [b, 2] int32, window shape [b, 2] int32, indices [b] int64)`` of the files
        of ``positions`` DALI may decode (``data``: their bytes, None for the others,
        which :meth:`_left_out` names or records)."""
        rows = self._left_out(positions, data)
        kept = [positions[r] for r in rows]
        sizes = self.screen.sizes[kept]
        windows = self.decode.windows(sizes[:, 0], sizes[:, 1], self.spec.seed, epoch, kept).astype(np.int32)
        encoded = [np.frombuffer(data[r], dtype=np.uint8) for r in rows]
        return encoded, windows[:, :2].copy(), windows[:, 2:].copy(), np.asarray(kept, dtype=np.int64)

    def _left_out(self, positions: list[int], data: list) -> list[int]:
        """The rows of the batch whose files DALI may decode; a one-line UserError naming
        the first other file under ``on_corrupt = "error"``, else each other file
        recorded in ``skipped`` and named once on stderr."""
        rows = [r for r, d in enumerate(data) if d is not None]
        if len(rows) == len(positions):
            return rows
        paths, why = self.source.files.paths, self.screen.bad
        bad = [(paths[i], why[i]) for i, d in zip(positions, data) if d is None]
        left_out(bad, self.source, self.skipped, whole_batch=not rows)
        return rows


# Decode.interpolation -> DALI's filter; both antialiased when shrinking, as PIL's are.
INTERPOLATIONS = {"bilinear": "INTERP_LINEAR", "bicubic": "INTERP_CUBIC"}


def build_stream_pipeline(batches, *, size: int, views: dict, labelled: bool = False, interpolation: str = "bilinear",
                          **pipeline_kwargs):
    """Pipeline over the batches of :meth:`DaliStreamLoader._fed` from ``batches``: each
    file's window decoded (ROI decode; "mixed" when the pipeline has a GPU), resized to
    ``size x size`` (``interpolation``, antialiased), then the graph of each of ``views``
    (``{name: GraphOptions}``). ``labelled``: each batch holds its ``[b]`` int64 labels
    last, an output ``labels`` (a shard's samples carry their own). Returns ``(pipeline,
    output names)``."""
    fn, types, pipeline_def = import_dali()
    gpu = any(opts.gpu for opts in views.values())
    names = []

    @pipeline_def(**pipeline_kwargs)
    def stream_pipeline():
        data, start, shape, index, *label = fn.external_source(source=batches, num_outputs=4 + labelled, batch=True)
        # jpeg_fancy_upsampling: the GPU upsamples chroma as libjpeg does (the CPU decoder, PIL).
        images = fn.decoders.image_slice(data, start=start, shape=shape, axis_names="HW", output_type=types.RGB,
                                         adjust_orientation=False, jpeg_fancy_upsampling=True,
                                         device="mixed" if gpu else "cpu")
        images = fn.resize(images, size=[size, size], antialias=True,
                           interp_type=getattr(types, INTERPOLATIONS[interpolation]))
        out = view_graphs(images, index, views)
        if labelled:
            out["labels"] = label[0]
        names.extend(out)
        return tuple(out.values())

    return stream_pipeline(), names
