"""SimCLR's and G-SimCLR's recipe section: the projection head, NT-Xent, each stage's settings.

The ``[method]`` section of a recipe: plain data and its rules, read with the recipe
without importing the method (torch, its model).
"""

from __future__ import annotations

from dataclasses import dataclass

from gssl_fast.config_checks import one_of, rule
from gssl_fast.sections import Recipe

VIEWS = ("simclr", "authors")  # method.view: SimCLR's standard view, the notebooks' (pipelines.simclr_ops)
PROTOCOLS = ("standard", "authors")  # method.linear_protocol, method.finetune_protocol


@dataclass(frozen=True)
class SimCLRConfig:
    name: str = "simclr"  # this method: SimCLR / G-SimCLR in stages
    guided: bool = True  # G-SimCLR: batches guided by k-means pseudo-labels of autoencoder codes
    clusters: int = 0  # k of k-means; 0 = the global pretraining batch (the notebooks)
    projection: tuple[int, ...] = (256, 128, 50)  # widths of the projection head
    temperature: float = 0.1  # NT-Xent tau
    view: str = "simclr"  # pretraining views: "simclr" (resized crop, flip, jitter, grayscale) | "authors" (the notebooks' flip and TF colour jitter, no crop, no grayscale)
    color_strength: float = 0.5  # colour jitter strength s ("authors": at most 1.25)
    color_p: float = 0.8  # probability of the colour jitter in a view (the notebooks: 0.5)
    view_draws: str = "image"  # "image": each image its own draws | "batch": one draw for the whole batch, as the notebooks' Keras layer on the batch tensor
    crop_scale_min: float = 0.08  # smallest area share of the random resized crop ("simclr" view)
    knn_k: int = 20  # neighbours of the kNN monitor (0 = no monitor)
    ae_epochs: int = 20  # epochs of the autoencoder stage (at most, with ae_patience)
    ae_batch_size: int = 128  # batch of the autoencoder stage, per process
    ae_lr: float = 1e-3  # Adam lr of the autoencoder stage
    ae_noise: float = 0.01  # std of the Gaussian input noise, pixels in [0, 1]
    ae_decoder: tuple[int, ...] = (64, 32, 16)  # channels of the autoencoder's three decoder convs (the notebooks: 128, 64, 32)
    ae_patience: int = 0  # > 0: the autoencoder trains on the images less method.holdout and stops after this many epochs without a lower held-out MSE, keeping its best weights; 0 = all ae_epochs
    kmeans_n_init: int = 3  # k-means runs from different seeds, the best kept (scikit-learn's n_init; the notebooks: 10)
    linear_protocol: str = "standard"  # "standard": SGD on augmented images, the epoch selected on the held-out split | "authors": features extracted once, Adam, early stopping on the held-out loss
    linear_epochs: int = 30  # epochs of the linear stage (at most, "authors")
    linear_lr: float = 0.1  # lr of the linear stage: SGD momentum 0.9, cosine, no weight decay ("standard") | Adam, constant ("authors")
    linear_batch_size: int = 0  # batch of the linear stage, per process; 0 = train.batch_size
    patience: int = 2  # "authors" linear and fine-tuning: epochs without a lower held-out loss before stopping, the best weights kept (Keras' EarlyStopping)
    holdout: float = 0.1  # share of the training images held out to select the linear classifier (and to stop early)
    finetune_protocol: str = "standard"  # "standard": backbone and head trained together, SGD | "authors": the head alone on the frozen extractor, then everything at finetune_lr with BatchNorm in eval mode, Adam, no augmentation, early stopping
    finetune_subset: str = "balanced"  # the images fine-tuned on: "balanced" (the same number per class) | "random" (the notebooks), never the held-out ones
    finetune_fraction: float = 0.1  # share of the training images (their labels) for fine-tuning
    finetune_epochs: int = 30  # epochs of the finetune stage (at most, "authors")
    finetune_lr: float = 0.01  # lr of the finetune stage: SGD momentum 0.9, cosine, weight decay 5e-4 ("standard") | Adam, constant ("authors")
    finetune_batch_size: int = 0  # batch of the finetune stages, per process; 0 = train.batch_size
    finetune_head_epochs: int = 35  # "authors": epochs at most of the head alone (stage finetune_head)
    finetune_head_lr: float = 1e-3  # "authors": Adam lr of the head alone

    @classmethod
    def check(cls, recipe: Recipe, source: str) -> None:
        c = recipe.method
        rule(c.clusters >= 0, "method.clusters", "be >= 0 (0: the global batch)", c.clusters, source)
        rule(len(c.projection) == 3 and min(c.projection) >= 1, "method.projection", "be three widths >= 1",
             c.projection, source)
        rule(c.temperature > 0, "method.temperature", "be > 0", c.temperature, source)
        rule(0 < c.crop_scale_min <= 1, "method.crop_scale_min", "be in (0, 1]", c.crop_scale_min, source)
        for key, allowed in (("view", VIEWS), ("view_draws", ("image", "batch")), ("linear_protocol", PROTOCOLS),
                             ("finetune_protocol", PROTOCOLS), ("finetune_subset", ("balanced", "random"))):
            one_of(getattr(c, key), allowed, f"method.{key}", source)
        top = 1.25 if c.view == "authors" else 2.5  # hue 0.2s <= 0.5; "authors": factors 1 - 0.8s >= 0 too
        rule(0 <= c.color_strength <= top, "method.color_strength", f"be in [0, {top}] with view = {c.view!r}",
             c.color_strength, source)
        rule(0 <= c.color_p <= 1, "method.color_p", "be in [0, 1]", c.color_p, source)
        rule(0 < c.holdout < 1, "method.holdout", "be in (0, 1)", c.holdout, source)
        rule(0 < c.finetune_fraction <= 1, "method.finetune_fraction", "be in (0, 1]", c.finetune_fraction, source)
        for key in ("ae_epochs", "linear_epochs", "finetune_epochs", "ae_batch_size", "kmeans_n_init", "patience",
                    "finetune_head_epochs"):
            rule(getattr(c, key) >= 1, f"method.{key}", "be >= 1", getattr(c, key), source)
        for key in ("ae_patience", "linear_batch_size", "finetune_batch_size"):
            rule(getattr(c, key) >= 0, f"method.{key}", "be >= 0", getattr(c, key), source)
        rule(c.finetune_head_lr > 0, "method.finetune_head_lr", "be > 0", c.finetune_head_lr, source)
        rule(len(c.ae_decoder) == 3 and min(c.ae_decoder) >= 1, "method.ae_decoder",
             "be three widths >= 1 (one per pooling of the encoder)", c.ae_decoder, source)
        rule(recipe.data.image_size % 8 == 0 or not c.guided, "data.image_size",
             "be a multiple of 8 for the autoencoder", recipe.data.image_size, source)
        rule(not recipe.pretext.tasks, "pretext.tasks", "be [] with SimCLR (its views are its own)",
             recipe.pretext.tasks, source)
