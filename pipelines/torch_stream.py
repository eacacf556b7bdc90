"""The torch backend's stream: files decoded in worker processes every epoch, cropped at
decode (``pipelines.stream``), then every view batched on the device as for arrays.

    from pipelines import make_loader
    from pipelines.stream import Decode, StreamSource
    source = StreamSource(files, Decode("random_resized"))      # files: a FileList
    loader = make_loader(source, batch_size=256, image_size=224, crop_padding=0, device="cuda")

Workers decode whole batches: a batch's files are one task, read with PIL
(libjpeg-turbo, at reduced scale where the window allows), and arrive as one
``[B, S, S, 3]`` uint8 array in shared memory. Nothing of the dataset is held in memory
but the file list and the batches in flight.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from PIL import Image

from pipelines.datasets.decode import PIL_ERRORS, problem
from pipelines.sampling import generator
from pipelines.spec import LoaderSpec
from pipelines.stream import Decode, StreamSource, decode_window, left_out
from pipelines.system import usable_cores
from pipelines.views import apply_ops, finish_view

PREFETCH_BATCHES = 2  # per worker: enough to hide a slow file, little memory


class _Batches(torch.utils.data.Dataset):
    """Key ``(epoch, positions)`` -> ``(images [B, S, S, 3] uint8, positions [B] int64,
    problems)``: the batch's files decoded, a file that cannot be read left black with what
    is wrong in ``problems`` (``{row: why}``), so the main process decides what it means."""

    def __init__(self, paths: tuple[str, ...], decode: Decode, size: int, seed: int):
        self.paths, self.decode, self.size, self.seed = paths, decode, size, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        epoch, positions = key
        out = np.zeros((len(positions), self.size, self.size, 3), dtype=np.uint8)
        problems, opened = {}, {}
        try:
            for row, i in enumerate(positions):  # headers only: the sizes the windows need
                try:
                    opened[row] = Image.open(self.paths[i])
                except PIL_ERRORS as e:
                    problems[row] = problem(self.paths[i], e)
            rows = sorted(opened)
            windows = self.decode.windows([opened[r].size[1] for r in rows], [opened[r].size[0] for r in rows],
                                          self.seed, epoch, [positions[r] for r in rows])
            for row, window in zip(rows, windows):
                try:
                    out[row] = decode_window(opened[row], tuple(window.tolist()), self.size,
                                             interpolation=self.decode.interpolation)
                except PIL_ERRORS as e:
                    problems[row] = problem(self.paths[positions[row]], e)
        finally:
            for image in opened.values():
                image.close()
        return torch.from_numpy(out), torch.as_tensor(positions, dtype=torch.int64), problems


class _Keys:
    """The sampler of the worker processes: the keys of the epoch being read (``now``),
    set by the loader before each pass; it lives in the loader's process."""

    def __init__(self):
        self.now: list = []

    def __iter__(self):
        return iter(self.now)

    def __len__(self) -> int:
        return len(self.now)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # a worker decodes with PIL; torch's pool would only compete


class StreamLoader:
    """Iterable of batches with ``len()`` over a :class:`~pipelines.stream.StreamSource`,
    the contract of every loader (``pipelines.make_loader``); each iteration is one epoch
    (``set_epoch`` as with a ``DistributedSampler``). ``num_workers``: decoding processes
    (0: decode in this process). ``skipped``: ``(path, what is wrong)`` of the files
    ``on_corrupt = "skip"`` left out so far."""

    def __init__(self, source: StreamSource, spec: LoaderSpec, *, num_workers: int | None = None):
        if spec.image_size is None:
            raise ValueError("a stream needs image_size: its files may have any size")
        self.source, self.spec, self.dataset = source, spec, source.files
        self.decode = spec.decode or source.decode
        self.num_workers = max(usable_cores() - 1, 1) if num_workers is None else num_workers
        self.normalize_to = spec.normalize_to(*_imagenet())
        self.epoch, self.skipped = 0, []
        self._batches = _Batches(source.files.paths, self.decode, spec.image_size, spec.seed)
        self._keys, self._loader = _Keys(), None

    def __len__(self) -> int:
        return self.spec.num_batches(len(self.source))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, s = self.epoch, self.spec
        self.epoch += 1
        order = s.epoch_order(len(self.source), epoch).tolist()
        self._keys.now = [(epoch, order[i:i + s.batch_size]) for i in range(0, len(order), s.batch_size)]
        decoded = map(self._batches.__getitem__, self._keys) if self.num_workers == 0 else self._workers()
        gen = generator(s.seed, "augment", s.shard_id, epoch)
        for images, positions, problems in decoded:
            yield self._batch(*self._kept(images, positions, problems), gen)

    def _workers(self):
        """The worker processes, started once and kept across epochs: the keys of each
        epoch reach them through :attr:`_keys`, read in this process."""
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self._batches, sampler=self._keys, batch_size=None, num_workers=self.num_workers,
                pin_memory=self.spec.device.type == "cuda", prefetch_factor=PREFETCH_BATCHES,
                persistent_workers=True, worker_init_fn=_one_thread)
        return self._loader

    def _kept(self, images: torch.Tensor, positions: torch.Tensor, problems: dict):
        """The batch less the files that could not be read (``pipelines.stream.left_out``)."""
        paths = self.source.files.paths
        bad = {row: (paths[int(positions[row])], why) for row, why in problems.items()}
        return kept_rows(bad, self.source, self.skipped, images, positions)

    def _batch(self, images: torch.Tensor, positions: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        labels = torch.from_numpy(self.source.labels).index_select(0, positions)
        return batch_views(images, positions, labels, self.spec, gen, self.normalize_to)


def kept_rows(bad: dict, source, skipped: list, *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A decoded batch's ``rows`` (``images [B, S, S, 3]`` uint8, ``positions [B]``
    int64, ...) less the rows ``bad`` (``{row: (name, what is wrong)}``) could not read,
    as ``source.on_corrupt`` says (``pipelines.stream.left_out``: named, or left out
    and recorded in ``skipped``)."""
    if not bad:
        return rows
    left_out([bad[r] for r in sorted(bad)], source, skipped, whole_batch=len(bad) == len(rows[0]))
    keep = torch.tensor([r for r in range(len(rows[0])) if r not in bad], dtype=torch.int64)
    return tuple(t.index_select(0, keep) for t in rows)


def batch_views(images: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor, spec: LoaderSpec,
                gen: torch.Generator, normalize_to) -> dict[str, torch.Tensor]:
    """The batch dict of a decoded batch: ``images [B, S, S, 3]`` uint8 (on the host),
    ``positions`` and ``labels`` ``[B]`` int64 -> every view of ``spec`` run batched on
    ``spec.device`` (``pipelines.views``), drawing from ``gen``, with ``labels`` and
    ``indices``."""
    dev = spec.device
    out = {"labels": labels.to(dev, non_blocking=True), "indices": positions.to(dev)}
    pixels = images.to(dev, non_blocking=True).permute(0, 3, 1, 2)  # [B, 3, S, S] uint8, channels last in memory
    for i, (name, view) in enumerate(spec.views):
        last = i == len(spec.views) - 1
        batch = pixels if last else pixels.clone()
        batch, params = apply_ops(batch, view, gen, owned=True)
        out.update(finish_view(name, batch, params, normalize_to=normalize_to))
    return out


def _imagenet():
    from pipelines.datasets import IMAGENET_MEAN, IMAGENET_STD

    return IMAGENET_MEAN, IMAGENET_STD


def build_loader(source: StreamSource, spec: LoaderSpec, *, num_workers: int | None = None) -> StreamLoader:
    return StreamLoader(source, spec, num_workers=num_workers)
