"""Running the paper recipes for a few steps on the built-in data."""

from __future__ import annotations

# Overrides that run a paper recipe for a few steps on the built-in data.
ON_SHAPES = ["data.name=shapes", "data.root=", "data.image_size=16", "data.train_size=128", "data.val_size=64",
             "data.mean=[]", "data.std=[]", "model.backbone=resnet8_cifar", "train.epochs=1", "train.batch_size=32", "train.global_batch_size=0",
             "train.eval_batch_size=64", "train.steps_per_epoch=2", "train.num_threads=1"]


def on_shapes(*extra: str) -> list[str]:
    """``--set`` arguments for :data:`ON_SHAPES` plus ``extra``."""
    return [arg for item in (*ON_SHAPES, *extra) for arg in ("--set", item)]
