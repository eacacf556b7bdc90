"""SimCLR's and G-SimCLR's recipe section: the projection head, NT-Xent, each stage's settings.

The ``[method]`` section of a recipe: plain data and its rules, read with the recipe
without importing the method (torch, its model).
"""

from __future__ import annotations

from dataclasses import dataclass

from gssl_fast.config_checks import rule
from gssl_fast.sections import Recipe


@dataclass(frozen=True)
class SimCLRConfig:
    name: str = "simclr"  # this method: SimCLR / G-SimCLR in stages
    guided: bool = True  # G-SimCLR: batches guided by k-means pseudo-labels of autoencoder codes
    clusters: int = 0  # k of k-means; 0 = the global pretraining batch (the notebooks)
    projection: tuple[int, ...] = (256, 128, 50)  # widths of the projection head
    temperature: float = 0.1  # NT-Xent tau
    color_strength: float = 0.5  # colour jitter strength s
    crop_scale_min: float = 0.08  # smallest area share of the random resized crop
    knn_k: int = 20  # neighbours of the kNN monitor (0 = no monitor)
    ae_epochs: int = 20  # epochs of the autoencoder stage
    ae_batch_size: int = 128  # batch of the autoencoder stage, per process
    ae_lr: float = 1e-3  # Adam lr of the autoencoder stage
    ae_noise: float = 0.01  # std of the Gaussian input noise, pixels in [0, 1]
    linear_epochs: int = 30  # epochs of the linear stage
    linear_lr: float = 0.1  # lr of the linear stage: SGD momentum 0.9, cosine, no weight decay
    holdout: float = 0.1  # share of the training images held out to select the linear classifier
    finetune_fraction: float = 0.1  # share of the labels for fine-tuning (balanced per class)
    finetune_epochs: int = 30  # epochs of the finetune stage
    finetune_lr: float = 0.01  # lr of the finetune stage: SGD momentum 0.9, cosine, weight decay 5e-4

    @classmethod
    def check(cls, recipe: Recipe, source: str) -> None:
        c = recipe.method
        rule(c.clusters >= 0, "method.clusters", "be >= 0 (0: the global batch)", c.clusters, source)
        rule(len(c.projection) == 3 and min(c.projection) >= 1, "method.projection", "be three widths >= 1",
             c.projection, source)
        rule(c.temperature > 0, "method.temperature", "be > 0", c.temperature, source)
        rule(0 < c.crop_scale_min <= 1, "method.crop_scale_min", "be in (0, 1]", c.crop_scale_min, source)
        rule(c.color_strength >= 0, "method.color_strength", "be >= 0", c.color_strength, source)
        rule(0 < c.holdout < 1, "method.holdout", "be in (0, 1)", c.holdout, source)
        rule(0 < c.finetune_fraction <= 1, "method.finetune_fraction", "be in (0, 1]", c.finetune_fraction, source)
        for key in ("ae_epochs", "linear_epochs", "finetune_epochs", "ae_batch_size"):
            rule(getattr(c, key) >= 1, f"method.{key}", "be >= 1", getattr(c, key), source)
        rule(recipe.data.image_size % 8 == 0 or not c.guided, "data.image_size",
             "be a multiple of 8 for the autoencoder", recipe.data.image_size, source)
        rule(not recipe.pretext.tasks, "pretext.tasks", "be [] with SimCLR (its views are its own)",
             recipe.pretext.tasks, source)
