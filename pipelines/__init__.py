"""Loaders that deliver G-SSL batches: uint8 images in, transformed batches with
pseudo-labels out, on the training device.

Every backend offers the same ``make_loader`` (SPEC section 6). Backends are imported
lazily so that ``import pipelines`` needs neither DALI nor FFCV.
"""

from __future__ import annotations

import importlib

from pipelines.errors import unknown_name

# Loader name (recipe key ``train.loader``) -> module offering ``make_loader``.
LOADERS: dict[str, str] = {
    "torch": "pipelines.torch",
    "dali": "pipelines.dali",
    "ffcv": "pipelines.ffcv",
}


def get_make_loader(name: str):
    """The ``make_loader`` factory of the backend called ``name``."""
    if name not in LOADERS:
        raise unknown_name("loader", name, LOADERS)
    return importlib.import_module(LOADERS[name]).make_loader
