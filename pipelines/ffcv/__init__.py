"""FFCV loader: ``.beton`` files in, G-SSL batches with pseudo-labels out.

    python -m gssl_fast.convert recipes/cifar10_lt.toml --split train --out data/c10lt.beton

    from pipelines.ffcv import make_loader
    loader = make_loader("data/c10lt.beton", batch_size=128, device="cuda")
    for batch in loader:
        batch["images"], batch["target_rotation"], ...

    convert.py   datasets -> .beton (+ a JSON of classes, mean, std); a stream's files ->
                 a .beton of JPEGs at their own size (convert_stream)
    ops.py       FFCV operations: crop and flip, the localizable transform, its parameters,
                 normalization; numba kernels
    stream.py    the JPEG decoder of a stream: each image's window (pipelines.stream.Decode)
                 decoded at reduced scale and resized
    loader.py    make_loader: the loader contract (docs/method.md section 6)
    source.py    what the loader reads of a recipe's dataset: data.beton, or one converted once

Needs the ``ffcv`` extra (``pip install -e .[ffcv]``; it builds against OpenCV and
libjpeg-turbo).
"""

import torch

_threads = torch.get_num_threads()
from pipelines.ffcv.convert import convert, convert_stream, read_info  # noqa: E402
from pipelines.ffcv.loader import FFCVLoader, build_loader, make_loader  # noqa: E402
from pipelines.ffcv.source import kept_source, open_source  # noqa: E402

# Importing ffcv sets torch's thread count to 1 (ffcv.pipeline.compiler); the process keeps its own.
torch.set_num_threads(_threads)

__all__ = ["FFCVLoader", "build_loader", "convert", "convert_stream", "kept_source", "make_loader", "open_source",
           "read_info"]
