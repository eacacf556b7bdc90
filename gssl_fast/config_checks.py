"""Value checks of a recipe: one function per section taking that section only, and
``check_recipe`` running them all plus the one rule that spans sections.

Allowed names come from the registry that owns them (datasets, long-tail kinds, pretext
tasks, flip axes, gates, losses, optimizers, schedules, loaders), imported inside the
check so that reading a recipe stays light. Every problem is a UserError on one line
naming the source, the key as spelled in TOML, the rule and the value found.
"""

from __future__ import annotations

from typing import Any, Sequence

from pipelines.errors import UserError
from gssl_fast.sections import (
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PretextConfig,
    Recipe,
    TrainConfig,
)


def show(value: Any) -> str:
    """A value as written in TOML: 'abc', 3, 0.1, true, ['rotation']."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(show, value)) + "]"
    return repr(value)


def rule(ok: bool, key: str, wanted: str, value: Any, source: str, fix: str = "") -> None:
    """UserError ``<key> must <wanted>, got <value> (<source>)[; <fix>]`` unless ``ok``."""
    if not ok:
        raise UserError(f"{key} must {wanted}, got {show(value)} ({source})" + (f"; {fix}" if fix else ""))


def one_of(value: str, allowed: Sequence[str], key: str, source: str) -> None:
    rule(value in allowed, key, "be one of " + ", ".join(map(repr, allowed)), value, source)


def check_data(cfg: DataConfig, source: str) -> None:
    # Imported here: pipelines.datasets is heavier than a recipe, and may import this module.
    from pipelines.datasets import DATASETS, SHARD_DATASETS
    from pipelines.datasets.decode import ON_CORRUPT
    from pipelines.datasets.fetch import ARCHIVES
    from pipelines.datasets.longtail import KINDS as LONGTAILS

    one_of(cfg.name, sorted({**DATASETS, **SHARD_DATASETS}), "data.name", source)
    rule(cfg.image_size >= 8, "data.image_size", "be >= 8", cfg.image_size, source)
    rule(cfg.crop_padding >= 0, "data.crop_padding", "be >= 0 (0: no crop)", cfg.crop_padding, source)
    for key, values, in_range, wanted in (
        ("data.mean", cfg.mean, all(0 <= v <= 1 for v in cfg.mean), "hold values in [0, 1]"),
        ("data.std", cfg.std, all(0 < v <= 1 for v in cfg.std), "hold values in (0, 1]"),
    ):
        rule(len(values) in (0, 3), key, "be [] (the dataset's default) or 3 values, one per RGB channel",
              values, source)
        rule(in_range, key, wanted, values, source, "they are for pixels scaled to [0, 1]: divide 0-255 by 255")
    one_of(cfg.longtail, LONGTAILS, "data.longtail", source)
    rule(0 < cfg.imbalance_ratio <= 1, "data.imbalance_ratio", "be in (0, 1] (rho = n_min / n_max)",
          cfg.imbalance_ratio, source)
    rule(0 <= cfg.val_fraction < 1, "data.val_fraction", "be in [0, 1) (0: the dataset's own val split)",
         cfg.val_fraction, source)
    rule(0 <= cfg.calibration_fraction < 1, "data.calibration_fraction", "be in [0, 1) (0: train on every "
         "training image)", cfg.calibration_fraction, source)
    rule(cfg.train_size > 0, "data.train_size", "be > 0", cfg.train_size, source)
    rule(cfg.val_size > 0, "data.val_size", "be > 0", cfg.val_size, source)
    rule(cfg.seed >= 0, "data.seed", "be >= 0", cfg.seed, source)
    one_of(cfg.on_corrupt, list(ON_CORRUPT), "data.on_corrupt", source)
    check_stream(cfg, source)
    check_shards(cfg, source)
    rule(not cfg.download or cfg.name in ARCHIVES, "data.download",
         "be false for a dataset without an official archive (those with one: " + ", ".join(ARCHIVES) + ")",
         cfg.download, source)
    rule(not cfg.mirror or cfg.download, "data.mirror", "come with data.download = true", cfg.mirror, source)


def check_stream(cfg: DataConfig, source: str) -> None:
    from pipelines.datasets import FOLDER_DATASETS, SHARD_DATASETS
    from pipelines.stream import INTERPOLATIONS, streamed

    rule(not cfg.stream or cfg.name in {**FOLDER_DATASETS, **SHARD_DATASETS}, "data.stream", "be false for a "
         "dataset that is not a folder of image files or shards (those that are: "
         + ", ".join([*FOLDER_DATASETS, *SHARD_DATASETS]) + ")", cfg.stream, source)
    one_of(cfg.crop, ("pad", "random_resized"), "data.crop", source)
    rule(cfg.crop == "pad" or streamed(cfg), "data.crop", "be \"pad\" unless data.stream = true or data.name = "
         "\"webdataset\" (the random-resized crop is taken as each image is decoded)", cfg.crop, source)
    for key, pair in (("data.crop_scale", cfg.crop_scale), ("data.crop_ratio", cfg.crop_ratio)):
        rule(len(pair) == 2 and 0 < pair[0] <= pair[1], key, "be [min, max] with 0 < min <= max", pair, source)
    rule(cfg.crop_scale[-1] <= 1, "data.crop_scale", "stay within (0, 1]: a share of the image", cfg.crop_scale, source)
    rule(0 < cfg.val_crop_fraction <= 1, "data.val_crop_fraction", "be in (0, 1]", cfg.val_crop_fraction, source)
    one_of(cfg.crop_interpolation, tuple(INTERPOLATIONS), "data.crop_interpolation", source)
    rule(cfg.crop_interpolation == "bilinear" or streamed(cfg), "data.crop_interpolation", "be \"bilinear\" unless "
         "data.stream = true or data.name = \"webdataset\" (in memory, images are resized once, bilinearly)",
         cfg.crop_interpolation, source)
    rule(cfg.workers >= 0, "data.workers", "be >= 0 (0: the cores this process may use)", cfg.workers, source)


def check_shards(cfg: DataConfig, source: str) -> None:
    """The keys of shards (``data.name = "webdataset"``), and those they exclude."""
    from pipelines.datasets import SHARD_DATASETS

    shards = cfg.name in SHARD_DATASETS
    rule(not shards or bool(cfg.root), "data.root", "name the shards for data.name = \"webdataset\" "
         "('DIR/train-{000000..000099}.tar' or the folder DIR; python -m gssl_fast.convert RECIPE --format "
         "webdataset --out DIR writes them)", cfg.root, source)
    rule(cfg.shuffle_buffer >= 0, "data.shuffle_buffer", "be >= 0 (0: the shards' order alone)", cfg.shuffle_buffer,
         source)
    rule(not shards or cfg.longtail == "none", "data.longtail", "be \"none\" for shards, which hold what was "
         "written", cfg.longtail, source, "write long-tailed shards instead (python -m gssl_fast.convert with "
         "--set data.longtail=...)")
    rule(not shards or not cfg.val_fraction, "data.val_fraction", "be 0 for shards: the validation shards are "
         "data.val_root", cfg.val_fraction, source)
    rule(not shards or not cfg.calibration_fraction, "data.calibration_fraction", "be 0 for shards, which are read "
         "in their order only", cfg.calibration_fraction, source)


def check_model(cfg: ModelConfig, source: str) -> None:
    rule(cfg.backbone.strip() != "", "model.backbone", "name a timm model, e.g. 'resnet32_cifar'",
          cfg.backbone, source)
    rule(0 <= cfg.drop_rate < 1, "model.drop_rate", "be in [0, 1)", cfg.drop_rate, source)
    # model.backbone and model.init are checked where the model is built (gssl_fast.model.network),
    # before anything is written: their registries import timm, which a recipe does not.


def check_pretext(cfg: PretextConfig, source: str) -> None:
    # Imported here so that reading a recipe does not import torch; the allowed values
    # are the registries next to the code they select.
    from gssl_fast.model.losses import COMBINE_MODES, GATE_MODES, GATE_POOLS
    from pipelines.localizable import FLIP_AXES, TASKS

    rule(all(t in TASKS for t in cfg.tasks), "pretext.tasks",
          "list task names among " + ", ".join(map(repr, TASKS)), cfg.tasks, source,
          "[] trains the class head alone")
    rule(len(set(cfg.tasks)) == len(cfg.tasks), "pretext.tasks", "name each task once", cfg.tasks, source)
    one_of(cfg.gate, tuple(GATE_MODES), "pretext.gate", source)
    one_of(cfg.combine, tuple(COMBINE_MODES), "pretext.combine", source)
    one_of(cfg.gate_pool, tuple(GATE_POOLS), "pretext.gate_pool", source)
    rule(cfg.lam >= 0, "pretext.lambda", "be >= 0", cfg.lam, source)
    one_of(cfg.flip_axis, tuple(FLIP_AXES), "pretext.flip_axis", source)


def check_loss(cfg: LossConfig, source: str) -> None:
    from gssl_fast.model.losses import CLASS_LOSSES

    one_of(cfg.name, tuple(CLASS_LOSSES), "loss.name", source)
    rule(cfg.ldam_max_margin > 0, "loss.ldam_max_margin", "be > 0", cfg.ldam_max_margin, source)
    rule(cfg.ldam_scale > 0, "loss.ldam_scale", "be > 0", cfg.ldam_scale, source)
    rule(cfg.pretext_scale > 0, "loss.pretext_scale", "be > 0 (1: the authors' raw cosines under LDAM)",
         cfg.pretext_scale, source)
    rule(cfg.drw_start_epoch >= 0, "loss.drw_start_epoch", "be >= 0", cfg.drw_start_epoch, source)
    rule(0 <= cfg.drw_beta < 1, "loss.drw_beta", "be in [0, 1)", cfg.drw_beta, source)


def check_optim(cfg: OptimConfig, source: str) -> None:
    from gssl_fast.model.optim import OPTIMIZERS, SCHEDULES, WARMUP_BY

    one_of(cfg.name, tuple(OPTIMIZERS), "optim.name", source)
    rule(cfg.lr > 0, "optim.lr", "be > 0", cfg.lr, source)
    rule(0 <= cfg.momentum < 1, "optim.momentum", "be in [0, 1)", cfg.momentum, source)
    rule(cfg.momentum > 0 or not cfg.nesterov, "optim.momentum", "be > 0 with nesterov = true",
          cfg.momentum, source)
    rule(cfg.weight_decay >= 0, "optim.weight_decay", "be >= 0", cfg.weight_decay, source)
    one_of(cfg.schedule, tuple(SCHEDULES), "optim.schedule", source)
    rule(cfg.warmup_epochs >= 0, "optim.warmup_epochs", "be >= 0", cfg.warmup_epochs, source)
    one_of(cfg.warmup_by, WARMUP_BY, "optim.warmup_by", source)
    if len(cfg.milestones) != len(cfg.milestone_factors):
        raise UserError(
            f"optim.milestones and optim.milestone_factors must have the same length, got "
            f"{show(cfg.milestones)} and {show(cfg.milestone_factors)} ({source}); "
            f"give one lr factor per milestone"
        )
    epochs = (0,) + cfg.milestones
    rule(all(a < b for a, b in zip(epochs, epochs[1:])), "optim.milestones", "be increasing epochs > 0",
          cfg.milestones, source)
    rule(all(f > 0 for f in cfg.milestone_factors), "optim.milestone_factors", "be > 0",
          cfg.milestone_factors, source)
    rule(cfg.first_decay_steps >= 1, "optim.first_decay_steps", "be >= 1", cfg.first_decay_steps, source)
    rule(cfg.t_mul >= 1, "optim.t_mul", "be >= 1 (each cosine period at least as long as the one before)",
         cfg.t_mul, source)
    rule(cfg.m_mul > 0, "optim.m_mul", "be > 0", cfg.m_mul, source)
    rule(0 <= cfg.alpha <= 1, "optim.alpha", "be in [0, 1]", cfg.alpha, source)


PRECISIONS = ("no", "fp16", "bf16")  # Accelerate's mixed_precision values
TRACKERS = ("none", "tensorboard")  # Accelerate trackers that need no account or network


def check_train(cfg: TrainConfig, source: str) -> None:
    at_least = {
        "epochs": 1, "batch_size": 1, "eval_batch_size": 1, "grad_accum_steps": 1, "keep_checkpoints": 1,
        "seed": 0, "num_threads": 0, "steps_per_epoch": 0, "steps": 0, "global_batch_size": 0,
    }
    for key, low in at_least.items():
        rule(getattr(cfg, key) >= low, f"train.{key}", f"be >= {low}", getattr(cfg, key), source)
    one_of(cfg.mixed_precision, PRECISIONS, "train.mixed_precision", source)
    one_of(cfg.log_with, TRACKERS, "train.log_with", source)
    one_of(cfg.nonfinite, ("stop", "skip"), "train.nonfinite", source)
    from pipelines import LOADERS

    one_of(cfg.loader, tuple(LOADERS), "train.loader", source)


CHECKS = {
    "data": check_data,
    "model": check_model,
    "pretext": check_pretext,
    "loss": check_loss,
    "optim": check_optim,
    "train": check_train,
}


def check_recipe(recipe: Recipe, source: str) -> None:
    """Checks every section, then the rule that spans sections (the method checks its
    own section: ``Method.check``)."""
    for section, check in CHECKS.items():
        check(getattr(recipe, section), source)
    from pipelines.datasets import SHARD_DATASETS
    from pipelines.datasets.shards import READERS

    if recipe.data.name in SHARD_DATASETS:
        rule(recipe.train.loader in READERS, "train.loader", "be one of " + ", ".join(map(repr, READERS)) + " for "
             "data.name = \"webdataset\" (the loaders that read shards)", recipe.train.loader, source)
    # FFCV's crop-and-resize decoder has one filter of its own (OpenCV's area); the torch and
    # DALI streams resample with either.
    rule(recipe.data.crop_interpolation == "bilinear" or recipe.train.loader != "ffcv", "data.crop_interpolation",
         f"be \"bilinear\" with train.loader = {show(recipe.train.loader)} (\"bicubic\" needs train.loader = "
         "\"torch\" or \"dali\")", recipe.data.crop_interpolation, source)
    size = recipe.data.image_size
    if recipe.pretext.tasks and size % 2:
        raise UserError(
            f"data.image_size must be even when pretext.tasks is non-empty, got {size} ({source}): "
            f"the localizable transform needs an even side to cut 2x2 quadrants; "
            f"use {size + 1} or set pretext.tasks = []"
        )
