"""What each loader reads, and the loaders of a run: the step between the datasets
(``gssl_fast.data``) and the backends (``pipelines``) for the trainer.

One shard per process: loaders are sharded by their own ``shard_id`` / ``num_shards``
and must not be passed to ``accelerator.prepare``.
"""

from __future__ import annotations

import os
from pathlib import Path

from gssl_fast.config import Recipe
from gssl_fast.errors import UserError


# Datasets read from image files, which the DALI loader decodes (on the GPU where there
# is one) instead of receiving arrays decoded by PIL.
FILE_DATASETS = ("tinyimagenet", "imagefolder")


def loader_source(recipe: Recipe, split: str, run_dir: Path, accelerator):
    """``(source, dataset)`` for the loader of ``train.loader`` and ``split``.

    ``dataset`` has the ``labels`` and ``classes``; ``source`` is what the loader reads:
    the same ``ArrayDataset``; for DALI on a folder dataset the ``FileList`` (DALI
    decodes the files; a long-tailed train split stays an array subset); for FFCV a
    ``.beton`` file (``data.beton`` for the train split, else converted once into the
    run folder).
    """
    from gssl_fast.data import load_dataset

    data, loader = recipe.data, recipe.train.loader
    if loader == "dali" and data.name in FILE_DATASETS and (split == "val" or data.longtail == "none"):
        from gssl_fast.data.folders import list_folder

        files = list_folder(data.root, split)
        return files, files
    dataset = load_dataset(data, split)
    if loader == "ffcv":
        return ffcv_file(data.beton if split == "train" else "", split, dataset, run_dir, accelerator), dataset
    return dataset, dataset


def ffcv_file(given: str, split: str, dataset, run_dir: Path, accelerator) -> str:
    """The ``.beton`` of ``split``: ``given``, or ``<run>/data/<split>.beton``, written
    by the main process (to a temporary name, then renamed) while the others wait."""
    if given:
        if not Path(given).is_file():
            raise UserError(f"data.beton = {given!r}: no such file; write it with "
                            f"python -m pipelines.ffcv RECIPE.toml --split train --out {given}, or set data.beton = ''")
        return given
    path = run_dir / "data" / f"{split}.beton"
    if accelerator.is_main_process and not path.exists():
        from pipelines.ffcv import convert
        from pipelines.ffcv.convert import info_path

        partial = path.with_name(f"partial-{split}.beton")
        convert(dataset, partial)
        os.replace(info_path(partial), info_path(path))
        os.replace(partial, path)
    accelerator.wait_for_everyone()
    return str(path)


def build_loaders(recipe: Recipe, train_ds, val_ds, accelerator):
    """Train and val loaders of ``train.loader``, one shard per process."""
    from pipelines import get_make_loader

    data, train = recipe.data, recipe.train
    make_loader = get_make_loader(train.loader)
    common = dict(
        image_size=data.image_size, seed=train.seed, shard_id=accelerator.process_index,
        num_shards=accelerator.num_processes, device=accelerator.device, crop_padding=data.crop_padding,
        hflip=data.hflip,
        flip_axis=recipe.pretext.flip_axis, mean=data.mean or None, std=data.std or None,
    )
    # drop_last keeps every process at the same number of steps (DDP needs it).
    train_loader = make_loader(train_ds, batch_size=train.batch_size, tasks=recipe.pretext.tasks,
                               augment=True, shuffle=True, drop_last=True, **common)
    val_loader = make_loader(val_ds, batch_size=train.eval_batch_size, tasks=(), augment=False,
                             shuffle=False, drop_last=False, **common)
    return train_loader, val_loader


def steps_in_epoch(loader, cfg) -> int:
    """Loader batches used per epoch: capped by ``steps_per_epoch`` optimizer steps and
    a whole number of accumulation rounds."""
    n = len(loader)
    if cfg.steps_per_epoch:
        n = min(n, cfg.steps_per_epoch * cfg.grad_accum_steps)
    n -= n % cfg.grad_accum_steps
    if n == 0:
        raise UserError(
            f"train.batch_size = {cfg.batch_size} x train.grad_accum_steps = {cfg.grad_accum_steps} per process "
            f"leaves no full step in an epoch of {len(loader.dataset) if hasattr(loader, 'dataset') else '?'} "
            "images; lower the batch size"
        )
    return n
