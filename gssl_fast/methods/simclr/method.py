"""SimCLR and G-SimCLR (docs/method.md section 4), run as stages in one run folder
(``gssl_fast.run.stages``):

    autoencoder  the denoising autoencoder on the training images; its codes -> codes.npy   (guided only)
    cluster      k-means of the codes -> pseudo_labels.npy, clusters.json                    (guided only)
    pretrain     contrastive training: two views per image, NT-Xent (negatives from the
                 global batch), batches guided by the pseudo-labels; kNN accuracy each epoch
    linear       linear classifiers at P1, P2, P3 on the frozen model, selected on a split
                 held out from the training images; the test accuracy at the selected epoch
    finetune_head  (the authors' protocol only) the class head alone on the frozen extractor
    finetune     the pretrained backbone and a new head trained on a share of the labels

    [method]
    name = "simclr"
    guided = true           # G-SimCLR; false: plain SimCLR (pretrain, linear, finetune)

Pretraining takes ``[train]`` and ``[optim]``; the other stages their own keys below.
``linear_protocol`` / ``finetune_protocol = "authors"`` run the evaluation of the authors'
notebooks instead (``protocol.py``: features extracted once, Adam, early stopping; the
fine-tuning in two phases).
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
        held_out = f"the {n} training images less method.holdout = {c.holdout}"
        linear, tune = c.linear_batch_size or t.batch_size, c.finetune_batch_size or t.batch_size
        drawn = "balanced over the classes" if c.finetune_subset == "balanced" else "drawn at random"
        checks = [BatchCheck("pretrain", t, n),
                  BatchCheck("finetune", dataclasses.replace(t, batch_size=tune, **whole),
                             len(finetune_positions(c, self.ctx)),
                             batch_key=batch_key(c.finetune_batch_size, "finetune"),
                             images_from=f"method.finetune_fraction = {c.finetune_fraction} of the {n} training "
                                         f"images, {drawn}")]
        if c.linear_protocol == "standard":  # "authors" fits on features, its last batch partial
            checks.insert(1, BatchCheck("linear", dataclasses.replace(t, batch_size=linear, **whole),
                                        len(linear_split(c, self.ctx)[0]), images_from=held_out,
                                        batch_key=batch_key(c.linear_batch_size, "linear")))
        if c.guided:
            ae = dataclasses.replace(t, batch_size=c.ae_batch_size, **whole)
            images = len(linear_split(c, self.ctx)[0]) if c.ae_patience else n
            checks.insert(0, BatchCheck("autoencoder", ae, images, batch_key="method.ae_batch_size",
                                        images_from=held_out if c.ae_patience else ""))
            if c.clusters > n:  # k-means needs an image per cluster at least
                raise UserError(f"stage cluster: method.clusters = {c.clusters} is more than the {n} training images "
                                "k-means groups; lower it (0: the global pretraining batch)")
        return checks

    @classmethod
    def metrics(cls):
        """Every stage's declarations (each stage's rows hold its own)."""
        from gssl_fast.methods.simclr.protocol import AuthorsFinetune, AuthorsLinear, FinetuneHead

        kinds = (AutoencoderStage, Cluster, Pretrain, Linear, AuthorsLinear, FinetuneHead, Finetune, AuthorsFinetune)
        return {k: v for kind in kinds for k, v in kind.metrics().items()}

    def stages(self):
        from gssl_fast.methods.simclr.protocol import AuthorsFinetune, AuthorsLinear, FinetuneHead

        c = self.cfg
        kinds = [Pretrain, AuthorsLinear if c.linear_protocol == "authors" else Linear]
        kinds += [FinetuneHead, AuthorsFinetune] if c.finetune_protocol == "authors" else [Finetune]
        if self.cfg.guided:
            kinds = [AutoencoderStage, Cluster, *kinds]
        # Built when their turn comes: a later stage reads what the earlier ones wrote.
        return [(k.stage, lambda k=k: k(self.cfg, self.ctx)) for k in kinds]


def batch_key(value: int, stage: str) -> str:
    """The recipe key of a stage's batch: its own when set, else train.batch_size."""
    return f"method.{stage}_batch_size" if value else "train.batch_size"
