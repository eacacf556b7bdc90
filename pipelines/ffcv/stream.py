"""The FFCV stream: a ``.beton`` of JPEG files (``convert.convert_stream``), each image
cropped as it is decoded, its window the one ``pipelines.stream.Decode.window`` draws.

    EpochWindows(decode, size, seed, reader)   per batch: each sample's window, and the
                                               JPEG scale and rows / columns to decode it at
    WindowDecoder(windows, size)               FFCV's crop-and-resize JPEG decoder with
                                               those windows instead of its own draws

FFCV's ``RandomResizedCropRGBImageDecoder`` draws its windows from ``np.random`` inside
compiled code. Here the window of each sample is a function of (seed, epoch, dataset
index) and the file's own size alone (``Decode.window``, torchvision's rule, as the torch
stream draws it), so a resumed run, any thread count and any shard decode the same
pixels. The decoder asks for its batch's windows once per batch (a call back into Python
from the compiled code, under the GIL), then decodes every sample in FFCV's threads: the
JPEG at the smallest of libjpeg-turbo's scales (1/8, 1/4, 1/2, 1) that keeps the window
at least ``2 * size`` pixels a side (:data:`OVERSAMPLE`), and the window resized to
``size x size`` by FFCV's resize (OpenCV, area interpolation). Pixels differ from PIL's
exact window (``pipelines.stream.read_image`` with ``draft=False``) by JPEG's fast DCT and
the resampling: ~1.5 levels on average. A file stored smaller than its own size
(``convert_stream``'s ``max_side``) has its window scaled to the stored size and rounded
to whole pixels there (FFCV's resize takes whole rows and columns): up to half a stored
pixel off.

Layout: ``[B, size, size, 3]`` uint8 out, as FFCV's decoders deliver.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from numba import objmode
from numba.core.errors import NumbaWarning

from pipelines.ffcv.convert import STREAM_FIELDS
from pipelines.stream import Decode

# The one call back into Python per batch holds the GIL by design; the decoding runs in parallel.
warnings.filterwarnings("ignore", message="Code running in object mode won't allow parallel", category=NumbaWarning)

# libjpeg-turbo's reductions a JPEG may be decoded at, largest first.
JPEG_SCALES = (8, 4, 2)
# A JPEG is reduced only while its window keeps this many times the output side: the
# window, rounded to whole pixels of the reduced decode, then moves by at most a quarter
# of an output pixel (PIL's draft in pipelines.stream keeps 1x, and half a pixel: ~2x
# the difference from an exact full-size decode on photos).
OVERSAMPLE = 2
# Columns of a plan: the reduction (decode at 1/d), then rows [r0, r1) and columns [c0, c1) there.
PLAN_COLUMNS = 5


class EpochWindows:
    """The windows of one loader's samples: ``decode`` (``pipelines.stream.Decode``) on
    each file's own size for (``seed``, epoch, dataset index), output ``size`` pixels a
    side. ``reader``: FFCV's reader of the stream's ``.beton``. ``set_epoch`` picks the
    epoch; FFCV's thread calls :meth:`plan` for each batch (``Decode.windows`` of the
    batch at once, under the GIL)."""

    def __init__(self, decode: Decode, size: int, seed: int, reader):
        fields = list(reader.handlers)
        meta = reader.metadata
        image = meta[f"f{fields.index('image')}"]
        # [N] int64: the stored image's size, the file's own (0 x 0: unreadable, never decoded).
        self.stored = image["height"].astype(np.int64), image["width"].astype(np.int64)
        self.size_of = tuple(meta[f"f{fields.index(k)}"].astype(np.int64) for k in STREAM_FIELDS[3:])
        self.jpeg = image["mode"] == IMAGE_MODES["jpg"]
        self.decode, self.size, self.seed, self.epoch = decode, size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def windows(self, indices: np.ndarray) -> np.ndarray:
        """``[B, 4]`` int64 ``(top, left, h, w)`` in pixels of each file: ``Decode.window``."""
        heights, widths = (v[indices] for v in self.size_of)
        out = np.tile(np.array([0, 0, 1, 1], dtype=np.int64), (len(indices), 1))  # unreadable: never decoded
        ok = heights > 0
        if ok.any():
            out[ok] = self.decode.windows(heights[ok], widths[ok], self.seed, self.epoch, indices[ok])
        return out

    def plan(self, indices: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Fills ``out[:B]`` (``[B, 5]`` int64) for the dataset ``indices`` (``[B]``): the
        reduction ``d`` to decode each stored image at (1 for a raw sample), then the rows
        ``[r0, r1)`` and columns ``[c0, c1)`` of its window in that decode, the file's
        window scaled to the stored size (``convert_stream``'s ``max_side``) and rounded
        to whole pixels there."""
        indices = np.asarray(indices, dtype=np.int64)
        top, left, h, w = self.windows(indices).T.astype(np.float64)
        height, width = (v[indices] for v in self.stored)
        file_h, file_w = (np.maximum(v[indices], 1) for v in self.size_of)
        # The window in pixels of the stored image.
        y0, y1 = top * height / file_h, (top + h) * height / file_h
        x0, x1 = left * width / file_w, (left + w) * width / file_w
        reduction, least = np.ones(len(indices), dtype=np.int64), OVERSAMPLE * self.size
        for d in JPEG_SCALES[::-1]:  # the largest that keeps the window >= least pixels a side
            fits = self.jpeg[indices] & ((y1 - y0) / d >= least) & ((x1 - x0) / d >= least)
            reduction[fits] = d
        # libjpeg's size at 1/d: ceil(n / d).
        rows, cols = -(-height // reduction), -(-width // reduction)
        r0 = np.clip(np.rint(y0 * rows / height), 0, rows - 1).astype(np.int64)
        c0 = np.clip(np.rint(x0 * cols / width), 0, cols - 1).astype(np.int64)
        r1 = np.clip(np.rint(y1 * rows / height), r0 + 1, rows).astype(np.int64)
        c1 = np.clip(np.rint(x1 * cols / width), c0 + 1, cols).astype(np.int64)
        out[: len(indices)] = np.stack([reduction, r0, r1, c0, c1], axis=1)
        return out


class WindowDecoder(ResizedCropRGBImageDecoder):
    """FFCV's crop-and-resize decoder of an ``RGBImageField`` with the windows of
    :class:`EpochWindows`: ``[B, size, size, 3]`` uint8. Keeps its parent's buffers (the
    output, a full-size decode per sample) and adds the batch's plans (``[B, 5]`` int64)."""

    get_crop_generator = None  # the parent's random window; the plans replace it

    def __init__(self, windows: EpochWindows, size: int):
        super().__init__((size, size))
        self.windows = windows

    def declare_state_and_memory(self, previous_state):
        state, (output, temp) = super().declare_state_and_memory(previous_state)
        return state, (output, temp, AllocationQuery((PLAN_COLUMNS,), np.dtype(np.int64)))

    def generate_code(self) -> Callable:
        jpg, mem_read, plan = IMAGE_MODES["jpg"], self.memory_read, self.windows.plan
        my_range = Compiler.get_iterator()
        imdecode_c, resize_crop_c = Compiler.compile(imdecode), Compiler.compile(resize_crop)

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage, plans = my_storage
            with objmode():
                plan(batch_indices, plans)
            for dst_ix in my_range(len(batch_indices)):
                field = metadata[batch_indices[dst_ix]]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.uint32(field["height"]), np.uint32(field["width"])
                d = plans[dst_ix, 0]
                if field["mode"] == jpg:
                    rows, cols = (height + d - 1) // d, (width + d - 1) // d
                    image = temp_storage[dst_ix].reshape(-1)[: rows * cols * 3].reshape(rows, cols, 3)
                    imdecode_c(image_data, image, height, width, height, width, 0, 0, 1, d, False, False)
                else:
                    image = image_data.reshape(height, width, 3)
                resize_crop_c(image, plans[dst_ix, 1], plans[dst_ix, 2], plans[dst_ix, 3], plans[dst_ix, 4],
                              destination[dst_ix])
            return destination[: len(batch_indices)]

        decode.is_parallel = True
        return decode
