"""The supervised method: cross-entropy or LDAM-DRW on the class head, plus G-SSL
whenever ``pretext.tasks`` is non-empty (docs/method.md section 2), or MixUp / CutMix batch
mixing with soft targets (Table 3) through timm's ``Mixup``.

    [method]
    name = "supervised"
    mixup_alpha = 1.0       # > 0 turns MixUp on
    cutmix_alpha = 0.0      # > 0 turns CutMix on (both: switch per batch)
"""

from __future__ import annotations

from gssl_fast.methods.base import main_batch, pixels
from gssl_fast.methods.gssl import GSSLMethod
from gssl_fast.methods.supervised.config import SupervisedConfig, mixing
from pipelines.errors import UserError


class Supervised(GSSLMethod):
    name = "supervised"
    Config = SupervisedConfig

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

