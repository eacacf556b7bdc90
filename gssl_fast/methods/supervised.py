"""The supervised method: cross-entropy or LDAM-DRW on the class head, plus G-SSL
whenever ``pretext.tasks`` is non-empty (docs/method.md section 2), or MixUp / CutMix batch
mixing with soft targets (Table 3) through timm's ``Mixup``.

    [method]
    name = "supervised"
    mixup_alpha = 1.0       # > 0 turns MixUp on
    cutmix_alpha = 0.0      # > 0 turns CutMix on (both: switch per batch)
"""

from __future__ import annotations

from dataclasses import dataclass

from gssl_fast.config_checks import rule
from gssl_fast.errors import UserError
from gssl_fast.methods import register_method
from gssl_fast.methods.base import Method, main_batch, pixels
from gssl_fast.sections import Recipe
from gssl_fast.task import build_task, gssl_scalars, pretext_batch_targets


@dataclass(frozen=True)
class SupervisedConfig:
    name: str = "supervised"  # this method (the default: a recipe without [method] trains it)
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) of MixUp; 0 = off (timm Mixup)
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) of CutMix; 0 = off
    mix_prob: float = 1.0  # share of batches mixed
    switch_prob: float = 0.5  # with both on: share of mixed batches that use CutMix
    label_smoothing: float = 0.0  # of the mixed soft targets


class GSSLMethod(Method):
    """A method whose model is the G-SSL component (``task.GSSLTask``): the class head
    with its loss (CE or LDAM-DRW) and, with ``pretext.tasks``, the gated pretext heads."""

    def build_model(self):
        c = self.ctx
        return build_task(c.model, c.pretext, c.loss, num_classes=c.num_classes, class_counts=c.class_counts,
                          mean=c.mean, std=c.std)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.model.tasks

    def on_epoch_start(self, epoch: int) -> None:
        self.model.class_loss.set_epoch(epoch)  # deferred re-weighting from loss.drw_start_epoch

    def gssl_step(self, model, images, batch) -> dict:
        """The G-SSL loss of ``images`` (pixels) with the labels and pretext targets of ``batch``."""
        targets = pretext_batch_targets(batch, self.tasks)
        out = model(images, batch["labels"], targets)
        return {"loss": out["loss"], **gssl_scalars(out, targets, self.tasks)}


@register_method
class Supervised(GSSLMethod):
    name = "supervised"
    Config = SupervisedConfig

    @classmethod
    def check(cls, recipe: Recipe, source: str) -> None:
        cfg = recipe.method
        for key in ("mixup_alpha", "cutmix_alpha", "label_smoothing"):
            rule(getattr(cfg, key) >= 0, f"method.{key}", "be >= 0", getattr(cfg, key), source)
        for key in ("mix_prob", "switch_prob"):
            rule(0 <= getattr(cfg, key) <= 1, f"method.{key}", "be in [0, 1]", getattr(cfg, key), source)
        if mixing(cfg):
            fix = "batch mixing blends whole images, which scrambles the quadrant the pretext heads predict"
            rule(not recipe.pretext.tasks, "pretext.tasks", "be [] with MixUp or CutMix", recipe.pretext.tasks,
                 source, fix)
            rule(recipe.loss.name == "ce", "loss.name", "be 'ce' with MixUp or CutMix (soft targets)",
                 recipe.loss.name, source)
            rule(recipe.train.batch_size % 2 == 0, "train.batch_size", "be even with MixUp or CutMix "
                 "(timm's Mixup pairs each image with the batch reversed)", recipe.train.batch_size, source)

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.mixup = None
        if mixing(cfg):
            if ctx.train.batch_size % 2:
                raise UserError(f"MixUp and CutMix need an even batch per process, got {ctx.train.batch_size} "
                                "(train.global_batch_size split over the processes); pick a global batch that "
                                "is an even multiple of the process count")
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy

            self.mixup = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mix_prob,
                               switch_prob=cfg.switch_prob, mode="batch", label_smoothing=cfg.label_smoothing,
                               num_classes=ctx.num_classes)
            self.soft_loss = SoftTargetCrossEntropy()

    def training_step(self, model, batches, *, accelerator) -> dict:
        batch = main_batch(batches)
        if self.mixup is None:
            return self.gssl_step(model, batch["images"], batch)
        # MixUp / CutMix on float pixels (timm mixes in place); the class loss against
        # the soft targets. No training accuracy: a mixed image has no single label.
        images, soft = self.mixup(pixels(batch["images"]).clone(), batch["labels"])
        loss = self.soft_loss(model(images)["logits"].float(), soft)
        return {"loss": loss, "loss_cls": loss.detach()}


def mixing(cfg: SupervisedConfig) -> bool:
    return cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0
