from __future__ import annotations

import pytest

from tests.gssl_fast.tiny import write_tiny

@pytest.fixture
def tiny_recipe(tmp_path):
    """Writes a tiny shapes recipe with ``extra`` TOML appended; returns its path."""

    def write(extra: str = "", name: str = "tiny"):
        return write_tiny(tmp_path, before=extra, after="steps_per_epoch = 2", name=name)

    return write

