"""Loaders that deliver batches on the training device: uint8 images in, the views a
method asks for (crop, flip, the localizable transform, ...) with their drawn
parameters and pseudo-labels out.

Every backend keeps the same contract (docs/method.md section 6), built by one ``make_loader``;
backends are imported lazily so that ``import pipelines`` needs neither DALI nor FFCV.

    from pipelines import make_loader
    loader = make_loader((images, labels), backend="torch", batch_size=128)
    # or: from pipelines.dali import make_loader   (the same, backend="dali")
"""

from __future__ import annotations

import importlib

from pipelines.errors import unknown_name

# Loader name (recipe key ``train.loader``) -> module offering ``build_loader(source, spec, **options)``.
LOADERS: dict[str, str] = {
    "torch": "pipelines.torch",
    "dali": "pipelines.dali",
    "ffcv": "pipelines.ffcv",
}

# Keywords a backend takes besides the spec: the torch stream's decoding processes,
# DALI's CPU threads, FFCV's threads.
BACKEND_OPTIONS = {"torch": ("num_workers",), "dali": ("num_threads",), "ffcv": ("num_workers",)}


def make_loader(source, *, backend: str = "torch", **kwargs):
    """A loader of ``backend`` over ``source``: an iterable of batch dicts with ``len()``
    (batches per epoch of this shard) and ``set_epoch(epoch)``.

    source: ``(images [N, H, W, 3] uint8, labels [N] int)``, an ``ArrayDataset``, a
    folder (ImageFolder or Tiny-ImageNet; ``split`` picks train or val), and for FFCV a
    ``.beton`` file; DALI decodes the files of a folder itself. A
    ``pipelines.stream.StreamSource`` (files decoded every epoch, cropped at decode)
    is read by the backends that stream, a ``pipelines.stream.ShardSource``
    (WebDataset shards) by the torch and DALI backends (``pipelines.datasets.shards.READERS``).
    kwargs: those of :func:`pipelines.spec.make_spec` (batch_size, image_size, views or
    tasks / augment / crop_padding / hflip / flip_axis, normalize, mean, std, shuffle,
    drop_last, seed, shard_id, num_shards, device, split, subset, plan, decode), plus the
    backend's options (``num_workers`` for the torch stream and FFCV, ``num_threads`` for DALI).

    Batches: each view's images ``[B, 3, H, W]`` (float32 normalized, or uint8) under
    the view's name, ``labels`` and ``indices`` ``[B]`` int64, and each view's drawn
    parameters (``pipelines.views``), all on ``device``.
    """
    from pipelines.spec import make_spec

    module = _backend(backend)
    options = {k: kwargs.pop(k) for k in BACKEND_OPTIONS[backend] if k in kwargs}
    spec = make_spec(**kwargs)
    return module.build_loader(source, spec, **options)


def open_source(backend: str, cfg, split: str):
    """``(source, dataset)``: what the loader of ``backend`` reads of ``split`` of the
    dataset ``cfg`` (a recipe's data section: name, root, image_size, ...) and the
    dataset itself (``labels``, ``classes``). Each backend owns its rule (DALI decodes a
    folder's files itself, FFCV reads a ``.beton``); the default is the decoded
    ``ArrayDataset``. Writes nothing but the decode cache."""
    module = _backend(backend)
    if hasattr(module, "open_source"):
        return module.open_source(cfg, split)
    from pipelines.datasets import load_dataset

    dataset = load_dataset(cfg, split)
    return dataset, dataset


def keep_sources(backend: str, sources: dict, datasets: dict, folder, *, report=None) -> dict:
    """``{split: what the loader of backend reads}``: ``sources`` (``{split: source}``
    as :func:`open_source` gave them), written into ``folder`` where the backend reads a
    file of its own making (FFCV's ``.beton``). With ``report`` (a path), the images the
    datasets left out (``data.on_corrupt = "skip"``) are listed there first
    (``pipelines.datasets.decode.record_skipped``) and counted on stdout."""
    if report is not None:
        _report(datasets, report)
    module = _backend(backend)
    keep = getattr(module, "kept_source", None)
    if keep is None:
        return dict(sources)
    return {split: keep(source, datasets[split], split, folder) for split, source in sources.items()}


def _report(datasets: dict, path) -> None:
    from pipelines.datasets.decode import record_skipped, shown

    skipped = {split: list(getattr(dataset, "skipped", ())) for split, dataset in datasets.items()}
    record_skipped(path, skipped)
    for split, rows in skipped.items():
        if rows:
            print(f"data: left out {len(rows)} unreadable {split} image{'s' if len(rows) > 1 else ''} "
                  f"(data.on_corrupt = \"skip\"), e.g. {shown(rows[0][0])}: it {rows[0][1]}; all listed in {path}",
                  flush=True)


def _backend(backend: str):
    if backend not in LOADERS:
        raise unknown_name("loader", backend, LOADERS)
    return importlib.import_module(LOADERS[backend])


def loader_factory(backend: str):
    """``make_loader`` with ``backend`` fixed: each backend module's own ``make_loader``."""

    def make(source, **kwargs):
        return make_loader(source, backend=backend, **kwargs)

    make.__doc__ = f'``pipelines.make_loader(source, backend="{backend}", **kwargs)``.'
    make.__name__ = make.__qualname__ = "make_loader"
    return make
