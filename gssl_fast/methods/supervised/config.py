"""The supervised method's recipe section: MixUp / CutMix through timm's ``Mixup``.

The ``[method]`` section of a recipe: plain data and its rules, read with the recipe
without importing the method (torch, its model).
"""

from __future__ import annotations

from dataclasses import dataclass

from gssl_fast.config_checks import rule
from gssl_fast.sections import Recipe


@dataclass(frozen=True)
class SupervisedConfig:
    name: str = "supervised"  # this method (the default: a recipe without [method] trains it)
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) of MixUp; 0 = off (timm Mixup)
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) of CutMix; 0 = off
    mix_prob: float = 1.0  # share of batches mixed
    switch_prob: float = 0.5  # with both on: share of mixed batches that use CutMix
    label_smoothing: float = 0.0  # of the mixed soft targets

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


def mixing(cfg: SupervisedConfig) -> bool:
    """MixUp or CutMix is on."""
    return cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0
