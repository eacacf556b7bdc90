"""The contract between a training method and the loop (``gssl_fast.train``).

A method owns its recipe section (``Config``, the ``[method]`` table), the streams of
batches it asks of the data, its model, its training step, its evaluation metrics and
its per-epoch hooks. The loop knows only this contract: it builds one loader per
stream, backpropagates ``step(...)["loss"]`` and logs every other scalar the step
returns under its own name (``group/key`` names become nested ``{"group": {"key": v}}``
fields of metrics.jsonl).

A new method subclasses :class:`Method` and joins the registry (``gssl_fast.methods``):

    @register_method
    class MyMethod(Method):
        name = "mine"
        Config = MyConfig          # frozen dataclass with a ``name`` field; an optional
                                   # classmethod check(recipe, source) holds its rules
        def training_step(self, model, batches, *, accelerator): ...

        @classmethod
        def metrics(cls):          # how the epoch line and the report show what it logs
            return {**super().metrics(), "val_mine": Metric("mine", "mine", "%", ".2f")}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from gssl_fast.model.metrics import FEW_SHOT, MANY_SHOT
from pipelines.errors import UserError
from gssl_fast.sections import (
    DataConfig,
    LossConfig,
    ModelConfig,
    PretextConfig,
    Recipe,
    TrainConfig,
)


@dataclass(frozen=True)
class Stream:
    """One stream of training batches a method asks for.

    batch_size: images per batch and process. tasks: the pretext tasks whose
    localizable transform the loader applies (their parameters come with the batch).
    augment: the ordinary augmentation (random crop with padding, whole-image flip).
    views: ``{name: view}`` (``pipelines.views``) instead of the one view that
    ``augment`` and ``tasks`` describe, e.g. a weak and a strong view of each image.
    Batches hold each view's ``[B, 3, H, W]`` uint8 pixels under its name (``images``
    by default) and the loader contract's ``[B]`` int64 entries (docs/method.md section 6).
    indices: the training images the stream draws from (``[M]`` int64 positions, a
    labeled subset say); None for all. plan: ``fn(epoch) -> [num_batches, global batch]``
    positions of every global batch (``pipelines.spec.LoaderSpec.plan``); None: shuffled.
    """

    batch_size: int
    tasks: tuple[str, ...] = ()
    augment: bool = True
    views: Mapping[str, tuple] | None = None
    indices: Any = None
    plan: Any = None


@dataclass(frozen=True)
class Metric:
    """How the epoch line (``progress.summary_line``) and the report show one field of
    metrics.jsonl, declared by the method that logs it (:meth:`Method.metrics`).

    label: its words ("top-1", "pgd20"). group: the words of the metrics shown together:
    one ``group label value ...`` segment of the epoch line, one figure and one column
    of the report. Three groups have places of their own: ``"train"``, the training
    scalars (in parentheses after the loss in the line; not in the table), ``"val"``, the
    headline evaluation (right after them, ``val top-1 91.20% top-5 99.10%``; the figure
    of validation curves) and ``""``, a field shown nowhere (a copy under another name).
    unit: put after the value ("%"; values are logged in that unit). fmt: a format
    spec (".2f"; "": the line's one number format, ``progress.number``). about: one
    sentence saying what it is, the report's caption of its group's figure. curve:
    drawn per epoch in the report (False for counts: images attacked, an epoch index).

    A field holding ``{key: value}`` (a ``group/key`` scalar of the step, such as
    ``gate/<task>``) is declared once by its field name and shown key by key; a field
    holding a list (per-class accuracy) is drawn as bars of its last value.
    """

    label: str
    group: str
    unit: str = ""
    fmt: str = ""
    about: str = ""
    curve: bool = True


# What every method's evaluation (``gssl_fast.model.metrics.evaluate``) and loop log.
GENERIC_METRICS: dict[str, Metric] = {
    "train_loss": Metric("loss", "train", about="Training loss per epoch (the mean over its steps)."),
    "val_acc1": Metric("top-1", "val", "%", ".2f", about="Validation top-1 and top-5 accuracy (%) after each epoch."),
    "val_acc5": Metric("top-5", "val", "%", ".2f", about="Validation top-1 and top-5 accuracy (%) after each epoch."),
    "val_per_class": Metric("per-class top-1", "per-class", "%", ".2f",
                            about="Validation top-1 accuracy (%) of each class at the last epoch."),
    **{f"val_{shots}_shot": Metric(shots, "shots", "%", ".2f",
                                   about=f"Validation top-1 accuracy (%) of long-tailed runs over the classes "
                                         f"with many (over {MANY_SHOT}), medium and few (under {FEW_SHOT}) training "
                                         "images.")
       for shots in ("many", "medium", "few")},
}

@dataclass(frozen=True)
class BatchCheck:
    """One training run's batch arithmetic, checked before a run folder is touched.

    stage: the stage it trains ("" for a method trained in one run); train: the
    ``[train]`` section it trains with (per-process batch); images: the images its main
    stream draws from in an epoch (before sharding); batch_key: the recipe key of its
    batch; images_from: how ``images`` follows from the recipe, for the message.
    """

    stage: str
    train: TrainConfig
    images: int
    batch_key: str = "train.batch_size"
    images_from: str = ""

    def refuse_empty(self, processes: int) -> None:
        """Refuses an epoch that would hold no full optimizer step on ``processes``
        processes, naming the stage, the images and the key."""
        cfg = self.train
        batches = (self.images // processes) // cfg.batch_size  # drop_last: every process the same count
        if batches >= (1 if cfg.steps_per_epoch else cfg.grad_accum_steps):  # steps_per_epoch: the stream cycles
            return
        where = f"stage {self.stage}: " if self.stage else ""
        images = f"{self.images} images ({self.images_from})" if self.images_from else f"{self.images} images"
        raise UserError(
            f"{where}{self.batch_key} = {cfg.batch_size} x train.grad_accum_steps = {cfg.grad_accum_steps} per "
            f"process x {processes} process{'es' if processes > 1 else ''} leaves no full step in an epoch of "
            f"{images}; lower {self.batch_key}" + (" or train.grad_accum_steps" if cfg.grad_accum_steps > 1 else ""))


@dataclass(frozen=True)
class MethodContext:
    """What a method is built from: the recipe sections it may read (``data`` for the
    crop and flip of a method's own views) and the data's facts.

    class_counts: ``[K]`` training images per class; mean, std: the input normalization
    in [0, 1] units (``data.mean`` / ``data.std`` or the dataset's defaults);
    longtail: the train split is long-tailed (evaluation adds shot-group accuracy).
    train_labels: ``[N]`` int64 numpy labels of the training images (a method choosing
    a labeled subset reads them); classes: their names, in label order. run_dir: the run folder, where a method may write
    what a run must keep (the labeled subset); main_process: this process writes files.
    """

    model: ModelConfig
    pretext: PretextConfig
    loss: LossConfig
    train: TrainConfig
    class_counts: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    longtail: bool = False
    data: DataConfig = DataConfig()
    train_labels: Any = None
    classes: tuple[str, ...] = ()
    run_dir: Path | None = None
    main_process: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    @classmethod
    def of(cls, recipe: Recipe, class_counts: Sequence[int], mean: Sequence[float], std: Sequence[float],
           **facts):
        """The context of ``recipe``; ``facts``: ``train_labels``, ``classes``, ``run_dir``,
        ``main_process``."""
        return cls(model=recipe.model, pretext=recipe.pretext, loss=recipe.loss, train=recipe.train,
                   class_counts=tuple(int(c) for c in np.asarray(class_counts)), mean=tuple(mean), std=tuple(std),
                   longtail=recipe.data.longtail != "none", data=recipe.data, **facts)


class Method:
    """Base of every training method; subclasses set ``name`` and ``Config``.

    ``self.model`` is the ``nn.Module`` the loop trains, prepares with Accelerate and
    checkpoints; ``model(images)["logits"]`` gives class logits of ``[B, 3, H, W]``
    pixels (uint8, or float in [0, 1]).
    """

    name: str = ""
    Config: type = object

    def __init__(self, cfg: Any, ctx: MethodContext):
        self.cfg, self.ctx = cfg, ctx
        self.model: nn.Module = self.build_model()

    # ---- stages
    def stages(self) -> list[tuple[str, Any]]:
        """``[(name, make), ...]`` of a method run in stages (``gssl_fast.run.stages``), in
        order, ``make()`` building the stage's method when its turn comes; empty for a
        method trained in one run (the default)."""
        return []

    trains: bool = True  # a stage that only computes (k-means, say) sets False and defines run()
    exported_stage: str = ""  # a staged method: the stage whose model load_model exports (it gives "logits")

    def run(self, accelerator) -> dict:
        """The work of a stage that does not train; returns a row for metrics.jsonl."""
        raise NotImplementedError

    def stage_sections(self, recipe: Recipe) -> Recipe:
        """The recipe this stage trains with (its own epochs, batch, optimizer); as is by default."""
        return recipe

    def finish(self, accelerator) -> None:
        """Hook after the last epoch of a stage (an autoencoder writes its codes, say)."""

    def attach_loaders(self, **factories) -> None:
        """Loader factories the loop offers: ``train_eval(subset=None)`` gives the
        training images (of ``subset``) untransformed, in order, sharded (a kNN monitor's
        memory bank, a held-out split); a stage that does not train also gets ``val()``,
        the validation images so."""
        self.loader_factories = factories

    def batch_checks(self) -> list[BatchCheck]:
        """The batch arithmetic of every training run of the method (each stage's),
        checked before anything is written: by default its main stream's."""
        main = next(iter(self.streams().values()))
        images = len(main.indices) if main.indices is not None else len(self.ctx.train_labels)
        return [BatchCheck("", self.ctx.train, images)]

    def on_train_start(self) -> None:
        """Hook once the run folder is open, before the first epoch: write the files a
        run keeps (a labeled subset, say). ``streams`` itself writes nothing."""

    # ---- data
    def streams(self) -> dict[str, Stream]:
        """Named streams of training batches, the main one first: the loop counts
        epochs in batches of the main stream; the others restart when they run out."""
        return {"train": Stream(self.ctx.train.batch_size, tasks=self.ctx.pretext.tasks)}

    # ---- model and optimizer
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def parameters_for_optimizer(self, model: nn.Module):
        """The module (its trainable parameters, grouped by ``optim.decay_bias_and_norm``)
        or the parameter groups handed to the optimizer; ``model`` by default."""
        return model

    # ---- training
    def on_epoch_start(self, epoch: int) -> None:
        """Hook before the first step of ``epoch`` (0-based)."""

    def training_step(self, model: nn.Module, batches: Mapping[str, dict], *, accelerator) -> dict:
        """One step: ``{"loss": scalar with gradient, **named 0-dim scalars}``.

        model: the prepared model (possibly DDP-wrapped); batches: one batch per stream.
        """
        raise NotImplementedError

    def on_optimizer_step(self, model: nn.Module) -> None:
        """Hook after each optimizer step (EMA weights); ``model`` is the unwrapped module."""

    def early_stop(self) -> bool:
        """True once the method's own stopping rule ends its training (early stopping, say),
        asked before each epoch, after a resume too (keep what it decides on in
        :meth:`state_dict`): the run ends there, its last checkpoint the final one."""
        return False

    # ---- evaluation
    def evaluate(self, model: nn.Module, loader, *, accelerator, epoch: int, last: bool) -> dict:
        """Metrics of ``model`` (unwrapped, eval mode is the method's to set) on the
        validation loader: classification accuracy by default (``val_acc1``, ...)."""
        from gssl_fast.model.metrics import evaluate

        return evaluate(model, loader, accelerator=accelerator, num_classes=self.ctx.num_classes,
                        train_counts=self.ctx.class_counts if self.ctx.longtail else None)

    def eval_model(self) -> nn.Module:
        """The weights evaluated and exported by ``gssl_fast.load_model`` (EMA weights
        for methods that keep them)."""
        return self.model

    @classmethod
    def metrics(cls) -> dict[str, Metric]:
        """How the epoch line and the report show the fields the method logs:
        ``{metrics.jsonl field: Metric}``, in the order they are shown. A class method:
        the report reads it from the method named in a run's config.toml, with no model
        built. The loop's own fields (``epoch``, ``lr``, ``images_per_s``, ...) need none;
        a field declared by no one is shown under its own name in the epoch line only.
        By default the fields of :meth:`evaluate` and the training loss (``GENERIC_METRICS``);
        a method adds its own: ``{**super().metrics(), "val_knn_acc1": Metric("top-1", "kNN", "%", ".2f")}``."""
        return dict(GENERIC_METRICS)

    # ---- extra state saved with the checkpoint (EMA weights, ...)
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def main_batch(batches: Mapping[str, dict]) -> dict:
    """The batch of the main (first) stream."""
    return next(iter(batches.values()))


def pixels(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` uint8 -> float32 pixels in [0, 1] (float input is returned as is)."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images
