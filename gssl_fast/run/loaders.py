"""The data of a run and its loaders: the step between the datasets
(``pipelines.datasets``) and the backends (``pipelines``) for the trainer.

``open_data`` opens both splits once per start (each backend's own rule of what its
loader reads, ``pipelines.open_source``); the run asks the ``Data`` for the loader of
each stream. One shard per process: loaders are sharded by their own ``shard_id`` /
``num_shards`` and must not be passed to ``accelerator.prepare``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gssl_fast.sections import DataConfig, TrainConfig

SKIPPED_FILE = "skipped_images.txt"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Data:
    """Both splits of a run's dataset as its loaders read them.

    cfg: the ``[data]`` section; backend: ``train.loader``; sources: ``{split: what the
    backend's loader reads}``; datasets: ``{split: the dataset}`` (``labels [N] int64``,
    ``classes``); mean, std: the model input's normalization in [0, 1] units
    (``data.mean`` / ``data.std``, else the dataset's, else ImageNet's);
    accelerator: whose process reads which shard, and on which device; report: the
    run's list of skipped images, once the run folder is open (:meth:`kept`).
    """

    cfg: DataConfig
    backend: str
    sources: dict
    datasets: dict
    mean: tuple[float, ...]
    std: tuple[float, ...]
    accelerator: Any
    report: Path | None = None

    @property
    def train(self):
        return self.datasets["train"]

    @property
    def class_counts(self) -> np.ndarray:
        """``[K]`` int64 training images per class."""
        return np.bincount(self.train.labels, minlength=len(self.train.classes))

    def kept(self, run_dir: Path) -> Data:
        """This data with what each loader reads written into the open run folder where
        the backend reads a file of its own (FFCV's ``.beton`` in ``<run>/data/``,
        converted once by the main process), and the images ``data.on_corrupt = "skip"``
        left out listed in ``<run>/skipped_images.txt`` (``pipelines.keep_sources``)."""
        from pipelines import keep_sources

        report = run_dir / SKIPPED_FILE
        main = self.accelerator.is_main_process
        with main_first(self.accelerator):
            sources = keep_sources(self.backend, self.sources, self.datasets, run_dir / "data",
                                   report=report if main else None)
        return replace(self, sources=sources, report=report)

    def note_skipped(self, loaders: dict) -> None:
        """Adds the files the loaders left out as they read them (``loaders``: ``{split:
        [loader]}``; a stream's ``skipped``, files found unreadable in an epoch) on any
        process to the run's list of skipped images. Every process calls it."""
        mine = [(split, row) for split, each in loaders.items() for loader in each
                for row in getattr(loader, "skipped", ())]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            mine = gather_object(mine)
        if self.report is not None and mine and self.accelerator.is_main_process:
            from pipelines.datasets.decode import record_skipped

            record_skipped(self.report, {split: [row for s, row in mine if s == split] for split in loaders})

    def stream_loaders(self, train: TrainConfig, flip_axis: str, streams: dict) -> dict:
        """One loader per stream of a method (``{name: Stream}``), one shard per process.
        The main (first) stream draws with ``train.seed``; every other stream with a seed
        of its own, so two streams of one dataset do not repeat each other."""
        from pipelines import make_loader
        from pipelines.sampling import derive_seed

        loaders = {}
        for i, (name, stream) in enumerate(streams.items()):
            seed = train.seed if i == 0 else derive_seed(train.seed, "stream", name) % (1 << 31)
            # drop_last keeps every process at the same number of steps (DDP needs it).
            loaders[name] = make_loader(self.sources["train"], batch_size=stream.batch_size,
                                        views=stream_views(self.cfg, flip_axis, stream), shuffle=True,
                                        drop_last=True, seed=seed, subset=stream.indices, plan=stream.plan,
                                        **self._common())
        return loaders

    def plain_loader(self, train: TrainConfig, split: str = "val", subset=None):
        """The images of ``split`` (of ``subset`` of it) as they are, each once over all
        processes: the validation loader, or the training images for a method's own use."""
        from pipelines import make_loader
        from pipelines.stream import decodes, streamed

        # A streamed split is decoded as validation is: no random window of the training images.
        decode = decodes(self.cfg)["val"] if streamed(self.cfg) else None
        return make_loader(self.sources[split], batch_size=train.eval_batch_size, tasks=(), augment=False,
                           shuffle=False, drop_last=False, seed=train.seed, subset=subset, decode=decode,
                           **self._common())

    def _common(self) -> dict:
        # Loaders deliver uint8 pixels; the model's first layer normalizes (model.network.InputNormalize).
        from pipelines import BACKEND_OPTIONS

        a = self.accelerator
        workers = {k: self.cfg.workers for k in BACKEND_OPTIONS[self.backend] if self.cfg.workers}
        return dict(backend=self.backend, image_size=self.cfg.image_size, shard_id=a.process_index,
                    num_shards=a.num_processes, device=a.device, normalize=False, **workers)


def open_data(cfg: DataConfig, backend: str, accelerator) -> Data:
    """Both splits of ``cfg`` (fetched first with ``data.download``) for the loader
    ``backend`` (``pipelines.open_source``:
    each backend's own rule); writes nothing into the run folder (:meth:`Data.kept`
    does, once it is open). The main process reads first: it fills the decode cache (and
    DALI's screen of the files), which the others then read instead of each decoding
    every file."""
    from pipelines import open_source
    from pipelines.datasets import IMAGENET_MEAN, IMAGENET_STD

    if cfg.download:
        from pipelines.datasets.fetch import fetch, root_for

        with main_first(accelerator):  # the main process downloads; the others find the folder there
            fetch(cfg.name, root_for(cfg.name, cfg.root), mirror=cfg.mirror or None)
    sources, datasets = {}, {}
    for split in SPLITS:
        with main_first(accelerator):
            sources[split], datasets[split] = open_source(backend, cfg, split)
    train = datasets["train"]
    mean = cfg.mean or getattr(train, "mean", None) or IMAGENET_MEAN
    std = cfg.std or getattr(train, "std", None) or IMAGENET_STD
    return Data(cfg, backend, sources, datasets, tuple(mean), tuple(std), accelerator)


@contextmanager
def main_first(accelerator):
    """The main process runs the block first, the others after it, even when it fails
    there (then each meets the same error and says so, instead of waiting for it, as they
    would under Accelerate's ``main_process_first``)."""
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
    try:
        yield
    finally:
        if accelerator.is_main_process:
            accelerator.wait_for_everyone()


def stream_views(data, flip_axis: str, stream) -> dict:
    """The views of a method's stream: its own, or the G-SSL training view built from
    ``[data]`` (crop padding, unless the crop was taken at decode; whole-image flip) and
    the stream's tasks."""
    from pipelines.views import DEFAULT_VIEW, standard_view

    if stream.views is not None:
        return dict(stream.views)
    # A window cropped at decode needs no padded crop after it: the flip alone.
    padding = 0 if data.crop == "random_resized" else data.crop_padding
    return {DEFAULT_VIEW: standard_view(augment=stream.augment, padding=padding, hflip=data.hflip,
                                        tasks=stream.tasks, flip_axis=flip_axis)}

