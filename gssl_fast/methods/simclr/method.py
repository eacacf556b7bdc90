"""SimCLR and G-SimCLR (docs/method.md section 4), run as stages in one run folder
(``gssl_fast.run.stages``):

    autoencoder  the denoising autoencoder on the training images; its codes -> codes.npy   (guided only)
    cluster      k-means of the codes -> pseudo_labels.npy, clusters.json                    (guided only)
    pretrain     contrastive training: two views per image, NT-Xent (negatives from the
                 global batch), batches guided by the pseudo-labels; kNN accuracy each epoch
    linear       linear classifiers at P1, P2, P3 on the frozen model, selected on a split
                 held out from the training images; the test accuracy at the selected epoch
    finetune     the pretrained backbone and a new head trained on a share of the labels

    [method]
    name = "simclr"
    guided = true           # G-SimCLR; false: plain SimCLR (pretrain, linear, finetune)

Pretraining takes ``[train]`` and ``[optim]``; the other stages their own keys below.
"""

from __future__ import annotations

import dataclasses

import torch

from gssl_fast.methods.base import BatchCheck, Method
from gssl_fast.methods.simclr.config import SimCLRConfig
from gssl_fast.methods.simclr.stages import (
    AutoencoderStage,
    Cluster,
    Finetune,
    Linear,
    Pretrain,
    finetune_positions,
    linear_split,
)
from pipelines.errors import UserError


class SimCLR(Method):
    name = "simclr"
    exported_stage = "finetune"  # load_model and gssl_fast.evaluate use the fine-tuned classifier
    Config = SimCLRConfig

    def build_model(self):
        return torch.nn.Identity()  # every stage builds its own

    def batch_checks(self):
        """Each training stage's batch arithmetic, and k-means' clusters against the images."""
        c, t, n = self.cfg, self.ctx.train, len(self.ctx.train_labels)
        whole = dict(steps=0, steps_per_epoch=0)  # the stages after pretraining train whole epochs
        checks = [BatchCheck("pretrain", t, n),
                  BatchCheck("linear", dataclasses.replace(t, **whole), len(linear_split(c, self.ctx)[0]),
                             images_from=f"the {n} training images less method.holdout = {c.holdout}"),
                  BatchCheck("finetune", dataclasses.replace(t, **whole), len(finetune_positions(c, self.ctx)),
                             images_from=f"method.finetune_fraction = {c.finetune_fraction} of the {n} training "
                                         "images, balanced over the classes")]
        if c.guided:
            ae = dataclasses.replace(t, batch_size=c.ae_batch_size, **whole)
            checks.insert(0, BatchCheck("autoencoder", ae, n, batch_key="method.ae_batch_size"))
            if c.clusters > n:  # k-means needs an image per cluster at least
                raise UserError(f"stage cluster: method.clusters = {c.clusters} is more than the {n} training images "
                                "k-means groups; lower it (0: the global pretraining batch)")
        return checks

    @classmethod
    def metrics(cls):
        """Every stage's declarations (each stage's rows hold its own)."""
        return {k: v for kind in (AutoencoderStage, Cluster, Pretrain, Linear, Finetune)
                for k, v in kind.metrics().items()}

    def stages(self):
        kinds = [Pretrain, Linear, Finetune]
        if self.cfg.guided:
            kinds = [AutoencoderStage, Cluster, *kinds]
        # Built when their turn comes: a later stage reads what the earlier ones wrote.
        return [(k.stage, lambda k=k: k(self.cfg, self.ctx)) for k in kinds]
