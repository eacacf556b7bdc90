"""PGD adversarial training with G-SSL (long paper, Table 2; docs/method.md section 3).

Each step attacks the loader's batch (crop, flip and the localizable transform already
applied) with PGD in pixel space, maximizing the summed class loss plus lambda times
the summed gated pretext loss (gate detached) with the model in training mode, as the
authors' code does; then minimizes the ordinary G-SSL loss on the adversarial images.
Evaluation adds robust accuracy (PGD-20, PGD-100; class loss alone, eval mode) on part
of the validation split, every few epochs and at the last one.

    [method]
    name = "adversarial"
    eps_255 = 8.0           # L-inf radius, 0-255 pixel units
    step_255 = 2.0          # PGD step of the training attack
    steps = 10              # PGD steps of the training attack
    eval_attacks = ["pgd20", "pgd100"]
    eval_images = 1000      # validation images attacked (0 = all)
    eval_every_epochs = 10  # robust accuracy every N epochs, and at the last
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gssl_fast.attacks import ATTACKS, pgd, robust_accuracy
from gssl_fast.config_checks import rule
from gssl_fast.methods import register_method
from gssl_fast.methods.base import main_batch
from gssl_fast.methods.supervised import GSSLMethod
from gssl_fast.sections import Recipe
from gssl_fast.task import pretext_batch_targets


@dataclass(frozen=True)
class AdversarialConfig:
    name: str = "adversarial"  # this method: PGD adversarial training with G-SSL
    eps_255: float = 8.0  # L-inf radius of the attacks in 0-255 pixel units (8/255)
    step_255: float = 2.0  # PGD step size of the training attack (2/255)
    steps: int = 10  # PGD steps of the training attack (PGD-10)
    random_start: bool = True  # start each attack at a uniform point of the eps-ball
    eval_attacks: tuple[str, ...] = ("pgd20", "pgd100")  # names of gssl_fast.attacks.ATTACKS
    eval_images: int = 1000  # validation images attacked at evaluation; 0 = the whole split
    eval_every_epochs: int = 10  # robust accuracy every N epochs and after the last one


@register_method
class Adversarial(GSSLMethod):
    """The supervised G-SSL model trained on PGD images."""

    name = "adversarial"
    Config = AdversarialConfig

    @classmethod
    def check(cls, recipe: Recipe, source: str) -> None:
        cfg = recipe.method
        rule(cfg.eps_255 > 0, "method.eps_255", "be > 0 (8.0 is 8/255)", cfg.eps_255, source)
        rule(cfg.step_255 > 0, "method.step_255", "be > 0 (2.0 is 2/255)", cfg.step_255, source)
        rule(cfg.steps >= 1, "method.steps", "be >= 1", cfg.steps, source)
        rule(all(a in ATTACKS for a in cfg.eval_attacks), "method.eval_attacks",
             "list attacks among " + ", ".join(map(repr, ATTACKS)), cfg.eval_attacks, source)
        rule(cfg.eval_images >= 0, "method.eval_images", "be >= 0 (0: every validation image)",
             cfg.eval_images, source)
        rule(cfg.eval_every_epochs >= 1, "method.eval_every_epochs", "be >= 1", cfg.eval_every_epochs, source)

    def training_step(self, model, batch_by_stream, *, accelerator) -> dict:
        batch = main_batch(batch_by_stream)
        labels, targets = batch["labels"], pretext_batch_targets(batch, self.tasks)
        plain = accelerator.unwrap_model(model)  # the attack needs no gradient sync

        def attack_loss(x):
            out = plain(x, labels, targets, detach_gate=True)
            # Batch means times B: the sums of the authors' code, so each image's
            # gradient does not shrink with the batch size.
            return out["loss"].float() * labels.numel()

        with accelerator.autocast():
            adv = pgd(attack_loss, batch["images"], eps=self.cfg.eps_255 / 255.0, step=self.cfg.step_255 / 255.0,
                      steps=self.cfg.steps, random_start=self.cfg.random_start)
        return self.gssl_step(model, adv, batch)

    def evaluate(self, model, loader, *, accelerator, epoch: int, last: bool) -> dict:
        report = super().evaluate(model, loader, accelerator=accelerator, epoch=epoch, last=last)
        if last or (epoch + 1) % self.cfg.eval_every_epochs == 0:
            for name in self.cfg.eval_attacks:
                attack = replace(ATTACKS[name], eps_255=self.cfg.eps_255)
                result = robust_accuracy(model, loader, attack, accelerator=accelerator,
                                         max_images=self.cfg.eval_images, seed=self.ctx.train.seed)
                report[f"val_{name}_acc1"] = result["acc1"]
            report["val_robust_images"] = result["images"] if self.cfg.eval_attacks else 0
        return report
