"""FFCV operations of the G-SSL image pipeline and the numba kernels behind them.

Random parameters are a pure function of ``(seed, epoch, dataset index)``: a
splitmix64 hash of the index under a per-epoch key. The image ops and the parameter
op (a second pipeline, fed by the ``index`` field) each evaluate it for the samples
of their batch, so the parameters a batch carries are exactly the ones its pixels went
through, whatever the batch composition, the thread count or the shard. This avoids
FFCV's habit of coupling ops through ``np.random`` seeded from the batch.

The ops are not compiled by FFCV (``jit_mode=False``): each is a thin Python call per
batch that reads the epoch's key and hands it, as an argument, to a numba kernel
compiled here (once per machine: numba caches it on disk; FFCV freezes the values captured by the code it
compiles, so a per-epoch key could not reach such code).

Layout inside the pipeline: ``[B, H, W, 3]`` uint8 (FFCV's decoded images).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numba
import numpy as np
import torch
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State

from pipelines.localizable import PERMUTATIONS, check_tasks
from pipelines.sampling import derive_seed

# Output channel c of a permuted quadrant reads input channel _PERMS[p, c] (docs/method.md section 1).
_PERMS = np.array(PERMUTATIONS, dtype=np.int64)

# Number of values of each localizable parameter, in the column order of
# pipelines.localizable.PARAM_KEYS: quadrant, flip, rotation, perm.
LOCALIZABLE_HIGHS = (4, 2, 4, 6)
_TASK_COLUMN = {"flip": 1, "rotation": 2, "perm": 3}


# numba compiles a kernel at its first call (seconds) and caches the machine code on
# disk (cache=True), so later processes load it. One flavour per kernel: numba's cache
# key ignores the `parallel` flag. The loops over the batch use FFCV's thread count.
_jit_serial = numba.njit(fastmath=True, nogil=True, cache=True)
_jit_parallel = numba.njit(fastmath=True, nogil=True, cache=True, parallel=True)


# ---------------------------------------------------------------- random draws


@_jit_serial
def _draw_kernel(key, indices, highs, out):
    """``out[i, j]`` uniform in ``[0, highs[j])`` from the splitmix64 hash of
    ``(key, indices[i])``; the columns are digits of one 64-bit value in a mixed radix
    (bias below ``prod(highs) / 2**64``)."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    for i in range(indices.shape[0]):
        z = np.uint64(key) + (np.uint64(indices[i]) + np.uint64(1)) * golden
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        for j in range(highs.shape[0]):
            base = np.uint64(highs[j])
            out[i, j] = np.int64(z % base)
            z = z // base
    return out


class EpochDraws:
    """Per-sample random parameters for one loader: ``[B, K]`` int64 as a function of
    (seed, epoch, dataset index). ``set_epoch`` picks the epoch; the ops call the
    draw methods from FFCV's thread."""

    def __init__(self, seed: int, tasks: Sequence[str], crop_padding: int, hflip: bool = True, stream: str = ""):
        # stream: a name that makes this view's draws independent of another view's.
        self.seed, self.stream = seed, stream
        self.tasks = check_tasks(tasks)
        self.crop_highs = np.array([2, 2 * crop_padding + 1, 2 * crop_padding + 1], dtype=np.int64)
        # Without the whole-image flip its column is zeroed; the crop offsets stay the same.
        self.crop_mask = np.array([int(hflip), 1, 1], dtype=np.int64)
        self.loc_highs = np.array(LOCALIZABLE_HIGHS, dtype=np.int64)
        # A disabled task keeps its identity value 0 (its column is zeroed).
        self.loc_mask = np.ones(4, dtype=np.int64)
        for task, col in _TASK_COLUMN.items():
            self.loc_mask[col] = task in self.tasks
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        salt = (self.stream,) if self.stream else ()
        self.crop_key = derive_seed(self.seed, "ffcv-crop-flip", *salt, epoch)
        self.loc_key = derive_seed(self.seed, "ffcv-localizable", *salt, epoch)

    def crop_flip(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``[B, 3]`` int64: whole-image flip (0/1), crop row and column offsets in
        ``[0, 2 * padding]``."""
        out = np.empty((len(indices), 3), np.int64) if out is None else out
        _draw_kernel(self.crop_key, indices, self.crop_highs, out)
        out *= self.crop_mask
        return out

    def localizable(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``[B, 4]`` int64: quadrant, flip, rotation, perm (PARAM_KEYS order), 0 for a
        disabled task. The quadrant is drawn always, so it does not depend on the tasks."""
        out = np.empty((len(indices), 4), np.int64) if out is None else out
        _draw_kernel(self.loc_key, indices, self.loc_highs, out)
        out *= self.loc_mask
        return out


# ---------------------------------------------------------------- kernels


@_jit_parallel
def _crop_flip_kernel(images, dst, params, padding):
    """Zero-padded random crop, then a left-right flip of the whole image.

    images, dst: ``[B, H, W, 3]`` uint8; params: ``[B, 3]`` (flip, crop_y, crop_x).
    ``dst[i, y, x] = padded[y + crop_y, x' + crop_x]`` with ``x' = W - 1 - x`` when
    flipped: torchvision's ``RandomCrop(H, padding)`` then ``RandomHorizontalFlip``.
    """
    b, h, w, _ = images.shape
    for i in numba.prange(b):
        flip, dy, dx = params[i, 0], params[i, 1] - padding, params[i, 2] - padding
        # Output columns [lo, hi) read inside the image; the others read the zero padding.
        lo, hi = (max(0, dx), min(w, w + dx)) if flip else (max(0, -dx), min(w, w - dx))
        step = -1 if flip else 1
        for y in range(h):
            sy = y + dy
            inside = 0 <= sy < h
            sx = w - 1 - lo + dx if flip else lo + dx
            for x in range(w):
                if inside and lo <= x < hi:
                    dst[i, y, x, 0] = images[i, sy, sx, 0]
                    dst[i, y, x, 1] = images[i, sy, sx, 1]
                    dst[i, y, x, 2] = images[i, sy, sx, 2]
                    sx += step
                else:
                    dst[i, y, x, 0] = 0
                    dst[i, y, x, 1] = 0
                    dst[i, y, x, 2] = 0
    return dst


@_jit_parallel
def _localizable_kernel(images, dst, params, flip_vertical, perms):
    """The localizable transform of docs/method.md section 1 on ``[B, H, W, 3]`` uint8 images.

    params: ``[B, 4]`` (quadrant, flip, rotation, perm). Output pixel ``(a, b)`` of the
    quadrant reads pixel ``(u, v)`` of the input quadrant, an affine function of
    ``(a, b)`` set by the rotation (``torch.rot90(g, k, dims=(-2, -1))`` rotates from the
    row axis towards the column axis) and then the flip of ``g``; output channel ``c``
    reads input channel ``perms[p, c]``. Pixels outside the quadrant are copied.
    Branches are per image, not per pixel: numba compiles this in seconds.
    """
    b, h, w, _ = images.shape
    r = h // 2
    n = r - 1
    flat_in, flat_out = images.reshape(b, h * w * 3), dst.reshape(b, h * w * 3)
    for i in numba.prange(b):
        for j in range(h * w * 3):
            flat_out[i, j] = flat_in[i, j]
        q, f, k, p = params[i, 0], params[i, 1], params[i, 2], params[i, 3]
        # u = ua * a + ub * b + uc, v = va * a + vb * b + vc (quadrant coordinates).
        ua, ub, uc, va, vb, vc = 1, 0, 0, 0, 1, 0
        if k == 1:
            ua, ub, uc, va, vb, vc = 0, 1, 0, -1, 0, n
        elif k == 2:
            ua, ub, uc, va, vb, vc = -1, 0, n, 0, -1, n
        elif k == 3:
            ua, ub, uc, va, vb, vc = 0, -1, n, 1, 0, 0
        if f and flip_vertical:
            ua, ub, uc = -ua, -ub, n - uc
        elif f:
            va, vb, vc = -va, -vb, n - vc
        y0, x0 = (q // 2) * r, (q % 2) * r
        c0, c1, c2 = perms[p, 0], perms[p, 1], perms[p, 2]
        for a in range(r):
            for bb in range(r):
                u, v = y0 + ua * a + ub * bb + uc, x0 + va * a + vb * bb + vc
                dst[i, y0 + a, x0 + bb, 0] = images[i, u, v, c0]
                dst[i, y0 + a, x0 + bb, 1] = images[i, u, v, c1]
                dst[i, y0 + a, x0 + bb, 2] = images[i, u, v, c2]
    return dst


# ---------------------------------------------------------------- FFCV operations


def _same_shape(previous: State) -> tuple[State, AllocationQuery]:
    """A Python-called op (``jit_mode=False``) writing a buffer shaped like its input."""
    return replace(previous, jit_mode=False), AllocationQuery(previous.shape, previous.dtype)


class RandomCropFlip(Operation):
    """Random crop with ``padding`` pixels of zero padding, then a random left-right flip
    of the whole image (the ordinary CIFAR augmentation)."""

    def __init__(self, draws: EpochDraws, padding: int):
        super().__init__()
        self.draws, self.padding = draws, padding

    def generate_code(self) -> Callable:
        kernel, draws, padding = _crop_flip_kernel, self.draws, self.padding

        def crop_flip(images, dst, indices):
            return kernel(images, dst, draws.crop_flip(indices), padding)

        crop_flip.with_indices = True
        return crop_flip

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        return _same_shape(previous_state)


class Localizable(Operation):
    """The localizable pretext transform with per-sample parameters from ``draws``."""

    def __init__(self, draws: EpochDraws, flip_axis: str):
        super().__init__()
        self.draws, self.flip_vertical = draws, flip_axis == "vertical"

    def generate_code(self) -> Callable:
        kernel, draws, flip_vertical = _localizable_kernel, self.draws, self.flip_vertical

        def localizable(images, dst, indices):
            return kernel(images, dst, draws.localizable(indices), flip_vertical, _PERMS)

        localizable.with_indices = True
        return localizable

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        h, w, c = previous_state.shape
        if h != w or h % 2 or c != 3:
            raise ValueError(f"the localizable transform needs square RGB images with an even side, got {h}x{w}x{c}")
        return _same_shape(previous_state)


class DrawnParams(Operation):
    """The parameters an image op applies to each sample, as ``[B, K]`` int64: the op of
    a second pipeline, whose input (the decoded index) only gives it the batch.
    ``kind`` is ``"localizable"`` (quadrant, flip, rotation, perm; :class:`Localizable`)
    or ``"crop_flip"`` (hflip, crop_y, crop_x; :class:`RandomCropFlip`)."""

    COLUMNS = {"localizable": 4, "crop_flip": 3}

    def __init__(self, draws: EpochDraws, kind: str):
        super().__init__()
        if kind not in self.COLUMNS:
            raise ValueError(f"kind must be one of {sorted(self.COLUMNS)}, got {kind!r}")
        self.draws, self.kind = draws, kind

    def generate_code(self) -> Callable:
        draw = getattr(self.draws, self.kind)

        def params(_, dst, indices):
            return draw(indices, out=dst)

        params.with_indices = True
        return params

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        shape, dtype = (self.COLUMNS[self.kind],), np.dtype(np.int64)
        return replace(previous_state, jit_mode=False, shape=shape, dtype=dtype), AllocationQuery(shape, dtype)


class ContiguousImage(Operation):
    """The last image op: ``[B, 3, H, W]`` (a channels-last view) -> a contiguous buffer
    on the same device, float32 ``(x / 255 - mean) / std`` when ``normalize_to = (mean,
    std)`` (the arithmetic of ``pipelines.augment.normalize``), else a uint8 copy.

    FFCV's ``ToTorchImage(channels_last=False)`` would do the copy, but allocates its
    buffer on the CPU whatever the device.
    """

    def __init__(self, normalize_to: tuple[Sequence[float], Sequence[float]] | None):
        super().__init__()
        self.normalize_to = normalize_to

    def generate_code(self) -> Callable:
        shift, scale = self.shift, self.scale

        def finish(images, dst):
            out = dst[: images.shape[0]]
            if shift is None:
                return out.copy_(images)
            torch.sub(images, shift, out=out)
            return out.mul_(scale)

        return finish

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        device, dtype = previous_state.device, previous_state.dtype
        self.shift = self.scale = None
        if self.normalize_to is not None:
            mean, std = (torch.tensor(v, dtype=torch.float32, device=device)[:, None, None] for v in self.normalize_to)
            self.shift, self.scale, dtype = mean * 255.0, 1.0 / (255.0 * std), torch.float32
        return replace(previous_state, dtype=dtype), AllocationQuery(previous_state.shape, dtype, device)
