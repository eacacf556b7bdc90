"""What the FFCV loader reads: a ``.beton`` file, the recipe's own (``data.beton``,
checked against the dataset it claims to hold) or one converted once into the run's
folder from the decoded dataset."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.errors import UserError


def open_source(cfg, split: str):
    """``(source, dataset)`` of ``split`` (``cfg``: the recipe's data section): the
    train split's ``data.beton`` path when given (checked), else the decoded
    ``ArrayDataset``, which :func:`kept_source` converts. Writes nothing but the decode cache."""
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
    """The ``.beton`` the loader reads: ``source`` when it is one already, else
    ``folder/<split>.beton``, converted from ``dataset`` unless it is there (written
    under a temporary name, then renamed: a killed conversion leaves no whole-looking file)."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    path = Path(folder) / f"{split}.beton"
    if not path.exists():
        from pipelines.ffcv.convert import convert, info_path

        partial = path.with_name(f"partial-{split}.beton")
        convert(dataset, partial)
        os.replace(info_path(partial), info_path(path))
        os.replace(partial, path)
    return str(path)
