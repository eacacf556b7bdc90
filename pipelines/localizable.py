"""Localizable pretext transforms and their pseudo-labels (docs/method.md section 1).

One quadrant of each image is flipped, rotated by ``k * 90`` degrees and has its RGB
channels permuted; the parameters are the pseudo-labels of the pretext heads:

    rotation target = 4 * quadrant + k     (16 classes, LoRot-E)
    flip target     = f                    (2 classes)
    perm target     = p                    (6 classes)

``apply_localizable`` is the one batched implementation every backend is checked
against; ``reference_localizable`` is the authors' per-sample loop, kept for the
parity tests and the benchmark.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Mapping, Sequence

import torch

from pipelines.errors import unknown_name

# Number of classes of each pretext head, in the canonical task order.
TASKS: dict[str, int] = {"rotation": 16, "flip": 2, "perm": 6}

# Output channel c of a permuted quadrant takes input channel PERMUTATIONS[p][c].
PERMUTATIONS: tuple[tuple[int, ...], ...] = tuple(itertools.permutations(range(3)))

FLIP_AXES = {"horizontal": -1, "vertical": -2}

PARAM_KEYS = ("quadrant", "flip", "rotation", "perm")


def check_tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    """Validate task names; returns them in canonical order (rotation, flip, perm)."""
    tasks = tuple(tasks)
    for t in tasks:
        if t not in TASKS:
            raise unknown_name("pretext task", t, TASKS)
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"pretext tasks repeat a name: {list(tasks)}")
    return tuple(t for t in TASKS if t in tasks)


def check_image_batch(images: torch.Tensor) -> int:
    """Checks ``[B, 3, H, W]`` with ``H == W`` even; returns the quadrant side ``H // 2``."""
    shape = tuple(images.shape)
    if images.dim() != 4 or shape[1] != 3:
        raise ValueError(f"localizable transform needs RGB images [B, 3, H, W], got shape {shape}")
    if shape[2] != shape[3] or shape[2] % 2:
        raise ValueError(
            f"localizable transform needs square images with an even side, got shape {shape}"
        )
    return shape[2] // 2


def draw_localizable(
    batch_size: int,
    *,
    tasks: Sequence[str] = tuple(TASKS),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Draws the transform parameters and pseudo-labels of one batch.

    Returns ``[B]`` int64 tensors: ``quadrant``, ``flip``, ``rotation``, ``perm`` (the
    parameters; identity 0 for a disabled task) and ``target_<task>`` for every enabled
    task. Drawing happens on the generator's device (CPU by default) so that a seed
    gives the same parameters on every device; the result is moved to ``device``.
    """
    tasks = check_tasks(tasks)
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def draw(high: int) -> torch.Tensor:
        return torch.randint(high, (batch_size,), generator=generator, device=gen_device)

    def zeros() -> torch.Tensor:
        return torch.zeros(batch_size, dtype=torch.int64, device=gen_device)

    # Draw the quadrant first and always, then one tensor per enabled task in the
    # canonical order, so the stream of random numbers is fixed by the task set.
    params = {
        "quadrant": draw(4),
        "rotation": draw(4) if "rotation" in tasks else zeros(),
        "flip": draw(2) if "flip" in tasks else zeros(),
        "perm": draw(6) if "perm" in tasks else zeros(),
    }
    params.update(pretext_targets(params, tasks))
    return {k: v.to(device) if device is not None else v for k, v in params.items()}


def pretext_targets(params: Mapping[str, torch.Tensor], tasks: Sequence[str]) -> dict[str, torch.Tensor]:
    """Pseudo-labels ``target_<task>`` ([B] int64) of the enabled tasks from the parameters."""
    targets = {}
    for task in check_tasks(tasks):
        if task == "rotation":
            targets["target_rotation"] = params["rotation"].add(params["quadrant"], alpha=4)
        else:
            targets[f"target_{task}"] = params[task].clone()
    return targets


_PIXELS: dict[tuple, torch.Tensor] = {}
_ROWS: dict[tuple, torch.Tensor] = {}

# Inverse permutations: row ``p`` gives, for each input channel, the output channel that
# permutation ``p`` moves it to.
_INVERSE = tuple(tuple(p.index(c) for c in range(3)) for p in PERMUTATIONS)

# Element types by byte width. The write-back moves each row of a quadrant as the widest
# of these that the row's length and the batch's layout allow (one 16-byte element for a
# 16-pixel uint8 row): a CPU copy costs per element far more than per byte.
_UNITS = {16: torch.complex128, 8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def _unit_width(byte_counts: Sequence[int], *tensors: torch.Tensor) -> int:
    """The widest ``_UNITS`` width dividing every count and every tensor's offset and address."""
    return next(u for u in _UNITS if all(n % u == 0 for n in byte_counts) and all(
        t.data_ptr() % u == 0 and t.storage_offset() * t.element_size() % u == 0 for t in tensors))


def _as_units(t: torch.Tensor, width: int) -> torch.Tensor:
    """The bytes of a flat contiguous tensor as ``width``-byte elements (itself when they
    are its own: every view is one more operator per batch)."""
    return t if t.dtype == _UNITS[width] else t.view(_UNITS[width])


def row_strides(images: torch.Tensor) -> tuple[int, int, int] | None:
    """``(image, channel, row)`` strides of a ``[B, C, H, W]`` batch whose rows are
    contiguous and whose rows, channels and images do not overlap (a contiguous batch,
    or windows of a wider buffer such as ``pipelines.augment.read_windows`` makes);
    None for any other layout."""
    b, c, h, w = images.shape
    sb, sc, sh, sw = images.stride()
    if sw != 1 and w > 1:
        return None
    plane = (h - 1) * sh + w  # elements from a channel's first pixel to past its last
    if (h > 1 and sh < w) or (c > 1 and sc < plane) or (b > 1 and sb < (c - 1) * sc + plane):
        return None
    return sb, sc, sh


def _quadrant(grid: torch.Tensor, q: int) -> torch.Tensor:
    """Quadrant ``q`` (0 top left, 1 top right, 2 bottom left, 3 bottom right) of a square
    ``[side, side]`` grid, as a view."""
    r = grid.shape[0] // 2
    return grid[(q // 2) * r : (q // 2 + 1) * r, (q % 2) * r : (q % 2 + 1) * r]


def _positions(side: int, row_stride: int) -> torch.Tensor:
    """``[side, side]`` int64: where each pixel of a channel plane lies, rows ``row_stride`` apart."""
    return (torch.arange(side)[:, None] * row_stride + torch.arange(side)).to(torch.int64)


def _pixel_table(side: int, row_stride: int, flip_axis: str, device: torch.device) -> torch.Tensor:
    """``[32, 1, r * r]`` int64 for images of ``side x side`` with rows ``row_stride`` apart:
    row ``8 * q + 4 * f + k`` lists, for every output pixel of quadrant ``q``, the position
    (in one channel plane) of the input pixel it copies. Built by applying the reference
    ops to a grid of positions, so the semantics are torch's own ``flip`` and ``rot90``."""
    key = (side, row_stride, flip_axis, str(device))
    if key not in _PIXELS:
        dim = FLIP_AXES[flip_axis]
        grid = _positions(side, row_stride)
        src = []
        for q in range(4):
            quad = _quadrant(grid, q)
            for f in range(2):
                g = quad.flip(dim) if f else quad
                src.extend(torch.rot90(g, k, dims=(-2, -1)).reshape(-1) for k in range(4))
        _PIXELS[key] = torch.stack(src)[:, None, :].to(device)
    return _PIXELS[key]


def _row_table(side: int, strides: tuple[int, int], device: torch.device, itemsize: int, width: int) -> torch.Tensor:
    """``[4 * 6, 3, r, r * itemsize / width]`` int64 for images of ``side x side`` of
    ``itemsize``-byte elements, channels and rows ``strides`` elements apart: row
    ``6 * q + p`` gives, for each input channel and row of quadrant ``q``, where that row
    goes under permutation ``p`` (its output channel's plane, its place in quadrant
    ``q``), counted in ``width``-byte units from the image's start."""
    channel_stride, row_stride = strides
    key = (side, strides, str(device), itemsize, width)
    if key not in _ROWS:
        per_row = side // 2 * itemsize // width
        grid = _positions(side, row_stride)
        starts = torch.stack([_quadrant(grid, q)[:, 0] for q in range(4)])  # [4, r]: each row's first pixel
        rows = starts[:, :, None] * itemsize // width + torch.arange(per_row)  # [4, r, per_row]
        channel = torch.tensor(_INVERSE) * (channel_stride * itemsize // width)  # [6, 3]
        _ROWS[key] = (rows[:, None, None, :, :] + channel[None, :, :, None, None]).flatten(0, 1).to(device)
    return _ROWS[key]


def apply_localizable(
    images: torch.Tensor,
    *,
    quadrant: torch.Tensor,
    flip: torch.Tensor,
    rotation: torch.Tensor,
    perm: torch.Tensor,
    flip_axis: str = "horizontal",
) -> torch.Tensor:
    """Applies the localizable transform to a whole batch; returns a new tensor.

    images: ``[B, 3, H, W]``, any dtype and device, ``H == W`` even.
    quadrant, flip, rotation, perm: ``[B]`` integer tensors (0..3, 0..1, 0..3, 0..5).
    flip_axis: ``"horizontal"`` mirrors left-right (default), ``"vertical"`` top-bottom.

    Flip, then ``rot90`` by ``rotation``, then the channel permutation, inside the chosen
    quadrant only: :func:`apply_localizable_` on a contiguous copy of ``images``.
    """
    check_image_batch(images)
    copy = images.clone(memory_format=torch.contiguous_format)
    return apply_localizable_(copy, quadrant=quadrant, flip=flip, rotation=rotation, perm=perm, flip_axis=flip_axis)


def apply_localizable_(
    images: torch.Tensor,
    *,
    quadrant: torch.Tensor,
    flip: torch.Tensor,
    rotation: torch.Tensor,
    perm: torch.Tensor,
    flip_axis: str = "horizontal",
) -> torch.Tensor:
    """In-place :func:`apply_localizable` on a batch the caller owns (a fresh crop, say:
    no copy of the batch) whose rows are contiguous (:func:`row_strides`: a contiguous
    batch, or the windows ``read_windows`` makes); returns ``images``.

    A fixed number of tensor ops whatever the batch size: one gather reads the quadrant
    of every channel already flipped and rotated (the pixel table of ``(q, f, k)``), then
    one ``index_copy_`` writes its rows back, each to the channel the permutation sends
    it to, as whole-row elements (``_UNITS``). Table rows are picked with
    ``index_select`` (a row copy; advanced indexing is several times slower on the CPU).
    """
    if flip_axis not in FLIP_AXES:
        raise unknown_name("flip_axis", flip_axis, FLIP_AXES)
    r = check_image_batch(images)
    strides = row_strides(images)
    if strides is None:
        raise ValueError("apply_localizable_ needs a batch with contiguous rows, e.g. a contiguous one; "
                         "use apply_localizable")
    if images.requires_grad and torch.is_grad_enabled():
        raise ValueError("the localizable transform moves pixels and has no gradient; apply it to images.detach()")
    (b, _, side, _), size, device = images.shape, images.element_size(), images.device
    sb, sc, sh = strides
    quadrant, flip, rotation, perm = (t.to(device=device, dtype=torch.int64) for t in (quadrant, flip, rotation, perm))

    code = rotation.add(quadrant, alpha=8).add_(flip, alpha=4)  # 8 q + 4 f + k
    pixels = _pixel_table(side, sh, flip_axis, device).index_select(0, code)  # [B, 1, r*r]
    # Moved as integers of the same width: a float16 gather on the CPU alters signalling NaNs.
    elements = images if images.dtype == _UNITS[size] else images.view(_UNITS[size])
    planes = elements.as_strided((b, 3, (side - 1) * sh + side), (sb, sc, 1))
    # [B, 3, r*r]: every input channel's quadrant, transformed; read whole before any write.
    values = planes.gather(2, pixels.expand(b, 3, r * r))
    span = (b - 1) * sb + 2 * sc + (side - 1) * sh + side  # elements from the first to past the last
    width = _unit_width([n * size for n in (r, sb, sc, sh, span)], images, values)
    # [B, 3, r, units per row]: where each row of each input channel's quadrant goes.
    step = sb * size // width
    image = torch.arange(0, b * step, step, device=device).view(b, 1, 1, 1)
    dest = _row_table(side, (sc, sh), device, size, width).index_select(0, perm.add(quadrant, alpha=6)).add_(image)
    batch = _as_units(elements.as_strided((span,), (1,)), width)
    batch.index_copy_(0, dest.view(-1), _as_units(values.view(-1), width))
    return images


def reference_localizable(
    images: torch.Tensor,
    *,
    quadrant: torch.Tensor,
    flip: torch.Tensor,
    rotation: torch.Tensor,
    perm: torch.Tensor,
    flip_axis: str = "horizontal",
) -> torch.Tensor:
    """The authors' per-sample loop: slow, obviously right; for tests and benchmarks.

    Same arguments and result as :func:`apply_localizable`.
    """
    r = check_image_batch(images)
    dim = FLIP_AXES[flip_axis]
    out = images.clone()
    for i in range(images.shape[0]):
        q = int(quadrant[i])
        rows = slice(0, r) if q < 2 else slice(r, 2 * r)
        cols = slice(0, r) if q % 2 == 0 else slice(r, 2 * r)
        quad = images[i, :, rows, cols]
        if int(flip[i]):
            quad = quad.flip(dim)
        quad = torch.rot90(quad, int(rotation[i]), dims=(-2, -1))
        quad = quad[list(PERMUTATIONS[int(perm[i])])]
        out[i, :, rows, cols] = quad
    return out
