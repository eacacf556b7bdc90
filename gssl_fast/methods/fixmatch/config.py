"""FixMatch's recipe section: the labeled subset, the unlabeled loss, the strong view, EMA.

The ``[method]`` section of a recipe: plain data and its rules, read with the recipe
without importing the method (torch, its model).
"""

from __future__ import annotations

from dataclasses import dataclass

from gssl_fast.config_checks import rule
from gssl_fast.sections import Recipe


@dataclass(frozen=True)
class FixMatchConfig:
    name: str = "fixmatch"  # this method: FixMatch with G-SSL
    num_labels: int = 4000  # labeled training images, num_labels / classes per class
    labels_file: str = ""  # text file of labeled dataset positions (one integer per line); "" = draw them
    label_seed: int = 0  # seed of the drawn labeled subset
    mu: int = 7  # unlabeled images per labeled image in a step
    tau: float = 0.95  # confidence threshold of the pseudo-labels
    lambda_u: float = 1.0  # weight of the unlabeled loss
    ema_decay: float = 0.999  # EMA of the weights, evaluated and exported; 0 = none
    padding_mode: str = "reflect"  # padding of the weak view's crop: "reflect" (FixMatch) | "zeros"
    strong_ops: int = 2  # RandAugment ops per image
    strong_magnitude: int = 10  # RandAugment m: levels drawn from 1..m-1
    cutout: float = 0.5  # side of the Cutout square, as a fraction of the image side

    @classmethod
    def check(cls, recipe: Recipe, source: str) -> None:
        cfg = recipe.method
        rule(cfg.num_labels >= 1 or cfg.labels_file != "", "method.num_labels", "be >= 1 (or set method.labels_file)",
             cfg.num_labels, source)
        rule(cfg.mu >= 1, "method.mu", "be >= 1", cfg.mu, source)
        rule(0 < cfg.tau <= 1, "method.tau", "be in (0, 1]", cfg.tau, source)
        rule(cfg.lambda_u >= 0, "method.lambda_u", "be >= 0", cfg.lambda_u, source)
        rule(0 <= cfg.ema_decay < 1, "method.ema_decay", "be in [0, 1) (0: no EMA)", cfg.ema_decay, source)
        rule(cfg.padding_mode in ("reflect", "zeros"), "method.padding_mode", "be 'reflect' or 'zeros'",
             cfg.padding_mode, source)
        rule(cfg.strong_ops >= 1, "method.strong_ops", "be >= 1", cfg.strong_ops, source)
        rule(2 <= cfg.strong_magnitude <= 10, "method.strong_magnitude", "be in 2..10 (levels 1..m-1 of 10)",
             cfg.strong_magnitude, source)
        rule(0 <= cfg.cutout <= 1, "method.cutout", "be in [0, 1]", cfg.cutout, source)
        rule(recipe.loss.name == "ce", "loss.name", "be 'ce' with FixMatch", recipe.loss.name, source)
        rule(recipe.data.longtail == "none", "data.longtail", "be 'none' with FixMatch", recipe.data.longtail, source)
