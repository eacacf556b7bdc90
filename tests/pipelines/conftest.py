"""The loader backends every contract test runs on, and the device they deliver to."""

from __future__ import annotations

import pytest
import torch

BACKENDS = ("torch", "dali", "ffcv")


# The package each backend needs beyond torch (installed by `make install`).
NEEDS = {"dali": "nvidia.dali", "ffcv": "ffcv"}


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    if request.param in NEEDS:
        pytest.importorskip(NEEDS[request.param])
    return request.param


@pytest.fixture
def device() -> str:
    """The training device of this machine: the CPU path is the real one here."""
    return "cuda" if torch.cuda.is_available() else "cpu"
