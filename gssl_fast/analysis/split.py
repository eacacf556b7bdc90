"""The images a finished run is evaluated on: a split of its recipe's dataset read as the
run's validation loader read it.

A dataset held in memory is its ``ArrayDataset``; a streamed one (``data.stream``, or
WebDataset shards) is read from its files or shards again, each image decoded as the
run's validation images were (the centre crop of ``data.val_crop_fraction`` for a
random-resized recipe), never decoded whole into memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipelines.errors import UserError


@dataclass(frozen=True)
class EvalSplit:
    """``source``: what the torch loader reads (``ArrayDataset``, ``StreamSource`` or
    ``ShardSource``); ``image_size``: the side it delivers; ``name``: how messages call it."""

    source: Any
    image_size: int
    name: str = "val"

    def __len__(self) -> int:
        return len(self.source)

    @property
    def labels(self) -> np.ndarray:
        """``[N]`` int64, in the order of the loader's ``indices``."""
        return np.asarray(self.source.labels)

    @property
    def classes(self) -> tuple:
        return tuple(self.source.classes)

    def loader(self, batch_size: int, device, subset=None):
        """The plain torch loader of the split (of ``subset``, ``[M]`` positions):
        ``images`` ``[B, 3, S, S]`` uint8 on ``device``, ``labels``, ``indices``."""
        from pipelines import make_loader
        from pipelines.stream import ShardSource

        if subset is not None and isinstance(self.source, ShardSource):
            raise UserError(f"the {self.name} images are read from WebDataset shards, in their order only: "
                            "a share of them cannot be picked")
        return make_loader(self.source, backend="torch", batch_size=batch_size, image_size=self.image_size,
                           tasks=(), augment=False, normalize=False, shuffle=False, drop_last=False,
                           device=device, subset=subset)

    def images(self, positions) -> np.ndarray:
        """``[M, S, S, 3]`` uint8: the images at ``positions`` (``[M]`` int), as the
        loader delivers them."""
        positions = np.asarray(positions, dtype=np.int64)
        if hasattr(self.source, "images"):
            return self.source.images[positions]
        from pipelines.stream import ShardSource

        wanted, found = set(positions.tolist()), {}
        # Shards are read in their order: the whole split passes once to find the positions.
        subset = None if isinstance(self.source, ShardSource) else np.unique(positions)
        for batch in self.loader(64, "cpu", subset=subset):
            for image, index in zip(batch["images"], batch["indices"].tolist()):
                if index in wanted:
                    found[index] = image.permute(1, 2, 0).numpy().copy()  # a loader may reuse its buffers
        missing = sorted(wanted - set(found))
        if missing:
            raise UserError(f"the {self.name} images at positions {missing[:5]} were left out of the stream as "
                            "unreadable (data.on_corrupt = \"skip\"); the run's skipped_images.txt lists them")
        return np.stack([found[p] for p in positions.tolist()])


def eval_split(cfg, split: str = "val") -> EvalSplit:
    """``split`` of the dataset of the recipe's ``[data]`` section ``cfg``, as the run's
    validation loader reads it: decoded in memory, or streamed with the validation decode
    (also for the training images)."""
    from pipelines.torch import open_source

    source, _ = open_source(cfg, split)
    decode = getattr(source, "decode", None)
    if decode is not None and split != "val":
        from pipelines.stream import decodes

        source = replace(source, decode=decodes(cfg)["val"])  # no random window of the training images
    return EvalSplit(source, cfg.image_size, split)
