"""What the FFCV loader reads: a ``.beton`` file, the recipe's own (``data.beton``,
checked against the dataset it claims to hold) or one converted once into the run's
folder: from the decoded dataset, or, for a stream (``data.stream``), from the files
themselves as JPEGs (``convert.convert_stream``), cropped at decode."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from pipelines.errors import UserError


def open_source(cfg, split: str):
    """``(source, dataset)`` of ``split`` (``cfg``: the recipe's data section): with
    ``cfg.stream``, the ``StreamSource`` of its files twice (``pipelines.stream.open_stream``;
    :func:`kept_source` writes them to a JPEG ``.beton``); else the train split's
    ``data.beton`` path when given (checked), else the decoded ``ArrayDataset``, which
    :func:`kept_source` converts. Writes nothing but the decode cache."""
    if getattr(cfg, "stream", False):
        if cfg.beton:
            raise UserError(f"data.beton = {cfg.beton!r} holds decoded images, and data.stream reads the files: "
                            "set data.beton = '' (the run writes their JPEG .beton once into its folder), "
                            "or data.stream = false")
        from pipelines.stream import open_stream

        source = open_stream(cfg, split)
        return source, source
    from pipelines.datasets import load_dataset

    dataset = load_dataset(cfg, split)
    if not (cfg.beton and split == "train"):
        return dataset, dataset
    if not Path(cfg.beton).is_file():
        raise UserError(f"data.beton = {cfg.beton!r}: no such file; write it with python -m gssl_fast.convert "
                        f"RECIPE.toml --split train --out {cfg.beton}, or set data.beton = ''")
    from pipelines.ffcv.convert import check_matches

    check_matches(cfg.beton, dataset, f"the recipe's {split} split (data.name = {cfg.name!r})")
    return cfg.beton, dataset


def kept_source(source, dataset, split: str, folder: Path) -> str:
    """The ``.beton`` the loader reads: ``source`` when it is one already; for a stream,
    ``folder/<split>-jpeg.beton`` (:func:`kept_stream`); else ``folder/<split>.beton``,
    converted from ``dataset`` unless it is there (written under a temporary name, then
    renamed: a killed conversion leaves no whole-looking file)."""
    from pipelines.stream import StreamSource

    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, StreamSource):
        return kept_stream(source, split, folder)
    path = Path(folder) / f"{split}.beton"
    if not path.exists():
        from pipelines.ffcv.convert import convert

        written(path, lambda partial: convert(dataset, partial))
    return str(path)


def written(path: Path, write) -> None:
    """``path`` (and its info file) written by ``write(partial)`` under a temporary name,
    then renamed: a killed conversion leaves no whole-looking file."""
    from pipelines.ffcv.convert import info_path

    partial = path.with_name(f"partial-{path.name}")
    write(partial)
    os.replace(info_path(partial), info_path(path))
    os.replace(partial, path)


def kept_stream(source, split: str, folder: Path) -> str:
    """``folder/<split>-jpeg.beton``: the files of the stream ``source`` as JPEGs, written
    unless there (as :func:`kept_source` writes), refused when written from other files;
    its JSON records ``source.decode``, the decode its loaders use by default."""
    from pipelines.atomic import write_text_atomic
    from pipelines.ffcv.convert import check_stream, convert_stream, info_path

    path = Path(folder) / f"{split}-jpeg.beton"
    if not path.exists():
        written(path, lambda partial: convert_stream(source, partial))
        return str(path)
    info = check_stream(path, source, f"the {split} split's files")
    if info["decode"] != asdict(source.decode):  # the same files, decoded otherwise now
        import json

        write_text_atomic(info_path(path), json.dumps({**info, "decode": asdict(source.decode)}, indent=1) + "\n")
    return str(path)
