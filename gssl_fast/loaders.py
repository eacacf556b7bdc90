"""What each loader reads, and the loaders of a run: the step between the datasets
(``pipelines.datasets``) and the backends (``pipelines``) for the trainer.

One shard per process: loaders are sharded by their own ``shard_id`` / ``num_shards``
and must not be passed to ``accelerator.prepare``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from gssl_fast.sections import Recipe
from pipelines.errors import UserError

SKIPPED_FILE = "skipped_images.txt"


def loader_source(recipe: Recipe, split: str, accelerator):
    """``(source, dataset)`` of ``split`` for the loader of ``train.loader``
    (``pipelines.open_source``: each backend's own rule); writes nothing into the run
    folder (:func:`written_sources` does, once it is open). The main process reads
    first: it fills the decode cache (and DALI's screen of the files), which the others
    then read instead of each decoding every file."""
    from pipelines import open_source

    with main_first(accelerator):
        return open_source(recipe.train.loader, recipe.data, split)


def written_sources(recipe: Recipe, data: dict, run_dir: Path, accelerator) -> dict:
    """``data`` (``{split: (source, dataset)}`` of :func:`loader_source`) with what the
    loader reads written into the open run folder where the backend reads a file of its
    own (FFCV's ``.beton`` in ``<run>/data/``, converted once by the main process)."""
    from pipelines import kept_source

    kept = {}
    for split, (source, dataset) in data.items():
        with main_first(accelerator):
            kept[split] = (kept_source(recipe.train.loader, source, dataset, split, run_dir / "data"), dataset)
    return kept


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


def report_skipped(data: dict, run_dir: Path, accelerator) -> None:
    """Counts the unreadable images ``data.on_corrupt = "skip"`` left out of each split
    (``data``: ``{split: (source, dataset)}``) in the log, and lists them in
    ``<run>/skipped_images.txt`` (split, path, what is wrong; tab-separated)."""
    skipped = {split: getattr(dataset, "skipped", ()) for split, (_, dataset) in data.items()}
    if not accelerator.is_main_process or not any(skipped.values()):
        return
    from pipelines.atomic import write_text_atomic
    from pipelines.datasets.decode import shown

    path = run_dir / SKIPPED_FILE
    write_text_atomic(path, "".join(f"{split}\t{shown(p)}\t{why}\n" for split, rows in skipped.items()
                                    for p, why in rows))
    for split, rows in skipped.items():
        if rows:
            print(f"data: left out {len(rows)} unreadable {split} image{'s' if len(rows) > 1 else ''} "
                  f"(data.on_corrupt = \"skip\"), e.g. {shown(rows[0][0])}: it {rows[0][1]}; all listed in {path}",
                  flush=True)


def _common(recipe: Recipe, accelerator) -> dict:
    # Loaders deliver uint8 pixels; the model's first layer normalizes (models.InputNormalize).
    return dict(backend=recipe.train.loader, image_size=recipe.data.image_size, shard_id=accelerator.process_index,
                num_shards=accelerator.num_processes, device=accelerator.device, normalize=False)


def stream_views(data, flip_axis: str, stream) -> dict:
    """The views of a method's stream: its own, or the G-SSL training view built from
    ``[data]`` (crop padding, whole-image flip) and the stream's tasks."""
    from pipelines.views import DEFAULT_VIEW, standard_view

    if stream.views is not None:
        return dict(stream.views)
    return {DEFAULT_VIEW: standard_view(augment=stream.augment, padding=data.crop_padding, hflip=data.hflip,
                                        tasks=stream.tasks, flip_axis=flip_axis)}


def build_train_loaders(recipe: Recipe, streams: dict, source, accelerator) -> dict:
    """One loader of ``train.loader`` per stream of the method (``{name: Stream}``), one
    shard per process. The main (first) stream draws with ``train.seed``; every other
    stream with a seed of its own, so two streams of one dataset do not repeat each other."""
    from pipelines import make_loader
    from pipelines.sampling import derive_seed

    loaders = {}
    for i, (name, stream) in enumerate(streams.items()):
        seed = recipe.train.seed if i == 0 else derive_seed(recipe.train.seed, "stream", name) % (1 << 31)
        # drop_last keeps every process at the same number of steps (DDP needs it).
        loaders[name] = make_loader(source, batch_size=stream.batch_size,
                                    views=stream_views(recipe.data, recipe.pretext.flip_axis, stream),
                                    shuffle=True, drop_last=True, seed=seed, subset=stream.indices, plan=stream.plan,
                                    **_common(recipe, accelerator))
    return loaders


def build_val_loader(recipe: Recipe, source, accelerator, subset=None):
    """The validation loader (or, over the training source, the training images as they
    are): untransformed pixels, every image (of ``subset``) once over all processes."""
    from pipelines import make_loader

    return make_loader(source, batch_size=recipe.train.eval_batch_size, tasks=(), augment=False, shuffle=False,
                       drop_last=False, seed=recipe.train.seed, subset=subset, **_common(recipe, accelerator))


def input_normalization(data, dataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of the model's input layer: ``data.mean`` / ``data.std``, else the
    dataset's defaults (ImageNet statistics for a list of files)."""
    from pipelines.datasets import IMAGENET_MEAN, IMAGENET_STD

    mean = data.mean or getattr(dataset, "mean", None) or IMAGENET_MEAN
    std = data.std or getattr(dataset, "std", None) or IMAGENET_STD
    return tuple(mean), tuple(std)


def check_batches(check, processes: int) -> None:
    """Refuses a ``BatchCheck`` (``gssl_fast.methods.base``) whose epoch would hold no
    full optimizer step on ``processes`` processes, naming the stage, the images and the key."""
    cfg = check.train
    batches = (check.images // processes) // cfg.batch_size  # drop_last: every process the same count
    if batches >= (1 if cfg.steps_per_epoch else cfg.grad_accum_steps):  # steps_per_epoch: the stream cycles
        return
    where = f"stage {check.stage}: " if check.stage else ""
    images = f"{check.images} images ({check.images_from})" if check.images_from else f"{check.images} images"
    raise UserError(
        f"{where}{check.batch_key} = {cfg.batch_size} x train.grad_accum_steps = {cfg.grad_accum_steps} per process "
        f"x {processes} process{'es' if processes > 1 else ''} leaves no full step in an epoch of {images}; "
        f"lower {check.batch_key}" + (" or train.grad_accum_steps" if cfg.grad_accum_steps > 1 else ""))


def steps_in_epoch(loader, cfg) -> int:
    """Batches of the main stream per epoch: one pass of its ``loader``, or
    ``steps_per_epoch`` optimizer steps (the streams start new passes as they run out),
    a whole number of accumulation rounds."""
    n = cfg.steps_per_epoch * cfg.grad_accum_steps if cfg.steps_per_epoch else len(loader)
    if len(loader) == 0:
        n = 0
    n -= n % cfg.grad_accum_steps
    if n == 0:
        raise UserError(
            f"train.batch_size = {cfg.batch_size} x train.grad_accum_steps = {cfg.grad_accum_steps} per process "
            f"leaves no full step in an epoch of {len(loader.dataset) if hasattr(loader, 'dataset') else '?'} "
            "images; lower the batch size"
        )
    return n
