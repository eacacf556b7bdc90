from __future__ import annotations

import pytest

TINY = """
[data]
name = "shapes"
image_size = 16
train_size = 128
val_size = 64

[model]
backbone = "resnet8_cifar"

[train]
epochs = 1
batch_size = 32
eval_batch_size = 64
num_threads = 1
steps_per_epoch = 2
"""


@pytest.fixture
def tiny_recipe(tmp_path):
    """Writes a tiny shapes recipe with ``extra`` TOML appended; returns its path."""

    def write(extra: str = "", name: str = "tiny"):
        path = tmp_path / f"{name}.toml"
        path.write_text(extra + "\n" + TINY)
        return path

    return write

