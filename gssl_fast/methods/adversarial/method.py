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

from dataclasses import replace

from gssl_fast.model.attacks import ATTACKS, pgd, robust_accuracy
from gssl_fast.methods.adversarial.config import AdversarialConfig
from gssl_fast.methods.base import Metric, main_batch
from gssl_fast.methods.gssl import GSSLMethod
from gssl_fast.model.task import pretext_batch_targets


class Adversarial(GSSLMethod):
    """The supervised G-SSL model trained on PGD images."""

    name = "adversarial"
    Config = AdversarialConfig

    @classmethod
    def own_metrics(cls):
        about = ("Validation top-1 accuracy (%) under each attack of method.eval_attacks (class loss alone, eval "
                 "mode) on method.eval_images validation images, every method.eval_every_epochs epochs.")
        robust = {f"val_{name}_acc1": Metric(name, "robust", "%", ".2f", about=about) for name in ATTACKS}
        images = Metric("images", "robust", about=about, curve=False)
        return {**robust, "val_robust_images": images}

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
