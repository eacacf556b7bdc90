"""The adversarial method's recipe section: the PGD attacks of training and evaluation.

The ``[method]`` section of a recipe: plain data and its rules, read with the recipe
without importing the method (torch, its model).
"""

from __future__ import annotations

from dataclasses import dataclass

from gssl_fast.config_checks import rule
from gssl_fast.sections import Recipe


@dataclass(frozen=True)
class AdversarialConfig:
    name: str = "adversarial"  # this method: PGD adversarial training with G-SSL
    eps_255: float = 8.0  # L-inf radius of the attacks in 0-255 pixel units (8/255)
    step_255: float = 2.0  # PGD step size of the training attack (2/255)
    steps: int = 10  # PGD steps of the training attack (PGD-10)
    random_start: bool = True  # start each attack at a uniform point of the eps-ball
    eval_attacks: tuple[str, ...] = ("pgd20", "pgd100")  # names of gssl_fast.model.attacks.ATTACKS
    eval_images: int = 1000  # validation images attacked at evaluation; 0 = the whole split
    eval_every_epochs: int = 10  # robust accuracy every N epochs and after the last one

    @classmethod
    def check(cls, recipe: Recipe, source: str) -> None:
        from gssl_fast.model.attacks import ATTACKS  # names only; the attacks import torch

        cfg = recipe.method
        rule(cfg.eps_255 > 0, "method.eps_255", "be > 0 (8.0 is 8/255)", cfg.eps_255, source)
        rule(cfg.step_255 > 0, "method.step_255", "be > 0 (2.0 is 2/255)", cfg.step_255, source)
        rule(cfg.steps >= 1, "method.steps", "be >= 1", cfg.steps, source)
        rule(all(a in ATTACKS for a in cfg.eval_attacks), "method.eval_attacks",
             "list attacks among " + ", ".join(map(repr, ATTACKS)), cfg.eval_attacks, source)
        rule(cfg.eval_images >= 0, "method.eval_images", "be >= 0 (0: every validation image)",
             cfg.eval_images, source)
        rule(cfg.eval_every_epochs >= 1, "method.eval_every_epochs", "be >= 1", cfg.eval_every_epochs, source)
