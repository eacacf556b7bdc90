"""Which DALI loader reads a source: the graph over arrays or a folder's files
(:class:`~pipelines.dali.loader.DaliLoader`), or a stream of a folder's files or of
WebDataset shards (:mod:`pipelines.dali.stream`, :mod:`pipelines.dali.shards`)."""

from __future__ import annotations

from pipelines import loader_factory
from pipelines.dali.graph import import_dali
from pipelines.dali.loader import DaliLoader, default_threads, resolve_source
from pipelines.datasets import FileList
from pipelines.datasets.arrays import IMAGENET_MEAN, IMAGENET_STD
from pipelines.sources import image_side
from pipelines.spec import LoaderSpec
from pipelines.views import Localizable


def build_loader(source, spec: LoaderSpec, *, num_threads: int | None = None) -> DaliLoader:
    """The DALI loader of ``spec``.

    source: an array pair or ``ArrayDataset`` (fed from memory), or a folder (ImageFolder
    or Tiny-ImageNet; ``spec.split`` picks train or val) or a ``FileList``, whose files
    DALI reads and decodes itself, resized to ``spec.image_size`` (default: the first
    file's width); or a ``pipelines.stream.StreamSource``, each file's window decoded
    every epoch (:mod:`pipelines.dali.stream`; ``spec.image_size`` required), or a
    ``pipelines.stream.ShardSource``: WebDataset shards in the torch backend's order,
    each sample's window decoded so (:mod:`pipelines.dali.shards`). On CUDA the graph
    runs on that GPU (decoding "mixed"), on the CPU otherwise. Normalization
    defaults: ImageNet statistics for files, the source's own otherwise. num_threads:
    DALI CPU worker threads; None = the cores this process may use, at most 8.
    """
    from pipelines.stream import ShardSource, StreamSource

    import_dali()
    stream = isinstance(source, (StreamSource, ShardSource))
    if stream and spec.image_size is None:
        raise ValueError("a stream needs image_size: its files may have any size")
    dataset = source if stream else resolve_source(source, spec.image_size, spec.split)
    if isinstance(dataset, (FileList, StreamSource, ShardSource)):
        side = spec.image_size or image_side(dataset.paths[0])
        size, defaults = (side, side), (IMAGENET_MEAN, IMAGENET_STD)
    else:
        size, defaults = dataset.image_size, (dataset.mean, dataset.std)
    if any(isinstance(op, Localizable) for _, view in spec.views for op in view) and (
            size[0] != size[1] or size[0] % 2):
        raise ValueError(f"the localizable transform needs square images with an even side, got {size[0]}x{size[1]}")
    options = dict(size=size, normalize_to=spec.normalize_to(*defaults), num_threads=num_threads or default_threads())
    if isinstance(source, ShardSource):
        from pipelines.dali.shards import DaliShardLoader

        return DaliShardLoader(source, spec, **options)
    if stream:
        from pipelines.dali.stream import DaliStreamLoader

        return DaliStreamLoader(source, spec, **options)
    return DaliLoader(dataset, spec, **options)


make_loader = loader_factory("dali")
