"""The tiny recipe the trainer's tests run: the built-in data at 16x16, a 75k-parameter net."""

from __future__ import annotations

from pathlib import Path

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
"""


def write_tiny(folder: Path, *, before: str = "", after: str = "", name: str = "tiny") -> Path:
    """Writes the tiny recipe to ``folder/<name>.toml`` with ``before`` (other sections)
    ahead of it and ``after`` (more [train] keys) after it; returns the path."""
    path = Path(folder) / f"{name}.toml"
    path.write_text(before + "\n" + TINY + after + "\n")
    return path
