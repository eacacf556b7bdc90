"""Random resized crop as one batched op with per-sample boxes, and its per-image reference.

    RandomResizedCrop(scale, ratio, size, input_size)   rrc_top, rrc_left, rrc_height, rrc_width

It equals torchvision's ``RandomResizedCrop`` (``transforms.v2.functional`` on uint8 CPU
tensors) image by image, pixel for pixel (:func:`reference_resized_crop`): the resize is
its default bilinear with ``antialias=True``; on the CPU (AVX2 / AVX512 / arm64) PyTorch's
uint8 kernel, separable passes (horizontal, then vertical) with Pillow's int16 fixed-point
weights, each rounded and clamped to uint8 (:func:`_taps`). Ours scales those weights by
``2**-precision`` (exact) and runs each pass as one batched matmul of per-sample weight
matrices, exact in float32 (float64 for weights of precision > 16). On CUDA torchvision
resizes in float32; ours gives the CPU result on every device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from pipelines.views import Op

__all__ = ["RandomResizedCrop", "boxes_of", "reference_resized_crop", "resized_crop"]

ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its central fallback


def _taps(length: int, out: int) -> tuple[int, list[tuple[int, list[int]]]]:
    """PyTorch's uint8 bilinear antialiased weights (``_compute_index_ranges_int16_weights``
    of ``aten/src/ATen/native/cpu/UpSampleKernel.cpp``) resampling ``length`` pixels to
    ``out``: ``(precision, [(first source pixel, int16 weights)] per output pixel)``; a pass
    computes ``(sum(w * x) + 2**(precision - 1)) >> precision``, clamped to uint8."""
    scale = length / out
    support = max(scale, 1.0)  # triangle filter of half-width 1, widened when shrinking
    taps_max = math.ceil(support) * 2 + 1
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    rows, w_max = [], 0.0
    for i in range(out):
        center = scale * (i + 0.5)
        first = max(int(center - support + 0.5), 0)
        count = min(max(min(int(center + support + 0.5), length) - first, 0), taps_max)
        ws = [max(0.0, 1.0 - abs((j + first - center + 0.5) * inv)) for j in range(count)]
        total = sum(ws)  # in order, as there
        ws = [w / total for w in ws] if total else ws
        w_max = max([w_max, *ws])
        rows.append((first, ws))
    precision = next((p for p in range(22) if int(0.5 + w_max * (1 << (p + 1))) >= 1 << 15), 22)
    return precision, [(first, [int(0.5 + w * (1 << precision)) for w in ws]) for first, ws in rows]


@functools.cache
def _taps_table(n: int, out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """For every window length ``1 .. n`` (row 0 unused) of an ``n``-pixel side resampled to
    ``out``: ``(first [n + 1, out] int64, weights [n + 1, out, K] float64 scaled by
    2**-precision, the largest precision)``."""
    taps = [_taps(length, out) for length in range(1, n + 1)]
    k = max(len(ws) for _, rows in taps for _, ws in rows)
    first = torch.zeros(n + 1, out, dtype=torch.int64)
    weights = torch.zeros(n + 1, out, k, dtype=torch.float64)
    for length, (precision, rows) in enumerate(taps, start=1):
        for i, (start, ws) in enumerate(rows):
            first[length, i] = start
            weights[length, i, : len(ws)] = torch.tensor(ws, dtype=torch.float64) / (1 << precision)
    return first.to(device), weights.to(device), max(p for p, _ in taps)


def _resample_matrices(n: int, out: int, offset: torch.Tensor, length: torch.Tensor,
                       dtype: torch.dtype) -> torch.Tensor:
    """``[B, n, out]``: per sample, the weights that resample its window
    ``offset .. offset + length`` of an ``n``-pixel side to ``out`` pixels."""
    first, weights, _ = _taps_table(n, out, offset.device)
    k = weights.shape[-1]
    rows = offset[:, None, None] + first.index_select(0, length)[:, :, None] + torch.arange(k, device=offset.device)
    matrices = torch.zeros(len(rows), n, out, dtype=dtype, device=offset.device)
    # Taps past a window's end weigh 0; clamped into the image, they add nothing.
    return matrices.scatter_add_(1, rows.clamp_(max=n - 1).transpose(1, 2),
                                 weights.index_select(0, length).to(dtype).transpose(1, 2))


def resized_crop(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor,
                 width: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box ``(top, left, height, width)`` (``[B]`` int, inside the image)
    resized to ``size = (h, w)``: ``[B, 3, H, W]`` uint8 -> new ``[B, 3, h, w]`` uint8, equal to
    torchvision's ``resized_crop(..., BILINEAR, antialias=True)`` on the CPU.

    Rows as ``[B, H, 3W]``: horizontal pass ``x @ across`` (``[B, 3H, W] @ [B, W, w]``), then
    vertical pass ``down^T @ x`` (``[B, h, H] @ [B, H, 3w]``), each ``floor(sum + 0.5)``
    clamped: the integer kernel's sums times ``2**-precision``, exact in float32 while
    precision <= 16 (sums < 2**24)."""
    (b, c, h, w), (out_h, out_w), dev = images.shape, size, images.device
    top, left, height, width = (t.to(dev, torch.int64) for t in (top, left, height, width))
    exact32 = (max(_taps_table(h, out_h, dev)[2], _taps_table(w, out_w, dev)[2]) <= 16
               and torch.get_float32_matmul_precision() == "highest")  # no TF32 / bf16 matmuls
    dtype = torch.float32 if exact32 else torch.float64
    # One work buffer for the passes (fresh CPU memory of this size costs page faults):
    # first the rows, later the output; then the horizontal result, later the output as int32.
    n_in, n_mid, n_out = b * h * c * w, b * h * c * out_w, b * out_h * c * out_w
    first = max(n_in, n_out)
    work = torch.empty(first + max(n_mid, n_out), dtype=dtype, device=dev)
    rows = work[:n_in].view(b, h, c, w).copy_(images.permute(0, 2, 1, 3))
    mid = torch.bmm(rows.view(b, h * c, w), _resample_matrices(w, out_w, left, width, dtype),
                    out=work[first : first + n_mid].view(b, h * c, out_w))
    out = torch.bmm(_resample_matrices(h, out_h, top, height, dtype).transpose(1, 2),
                    mid.add_(0.5).floor_().clamp_(max=255).view(b, h, c * out_w),
                    out=work[:n_out].view(b, out_h, c * out_w))
    ints = work[first:].view(torch.int32)[:n_out].view(b, c, out_h, out_w)
    ints.copy_(out.add_(0.5).clamp_(max=255).view(b, out_h, c, out_w).permute(0, 2, 1, 3))
    return ints.to(torch.uint8)  # truncates; float -> uint8 directly is ~4x slower on the CPU


def reference_resized_crop(images: torch.Tensor, params: Mapping[str, torch.Tensor],
                           size: tuple[int, int]) -> torch.Tensor:
    """:class:`RandomResizedCrop` image by image: torchvision's ``resized_crop`` (bilinear,
    antialias) with Python ints; ``[B, 3, H, W]`` uint8 -> new ``[B, 3, *size]`` uint8."""
    boxes = zip(*(params[k].tolist() for k in RandomResizedCrop.keys))
    return torch.stack([TF.resized_crop(image, *box, list(size), interpolation=InterpolationMode.BILINEAR,
                                        antialias=True) for image, box in zip(images, boxes)])


@dataclass(frozen=True)
class RandomResizedCrop(Op):
    """torchvision's ``RandomResizedCrop(size, scale, ratio)`` (bilinear, antialias). Per
    image, up to 10 attempts of an area fraction ``a`` uniform in ``scale`` and a ratio ``r``
    log-uniform in ``ratio`` give ``w = round(sqrt(a H W r))``, ``h = round(sqrt(a H W / r))``;
    the first box that fits is taken at a uniform position, else the central fallback (:func:`boxes_of`).

    ``input_size``: the side (or ``(H, W)``) of the images the op receives, which the draw
    needs (torchvision accepts an attempt by its size in pixels); ``apply`` refuses others.
    ``size``: the output side (the input size when None). Reports the box as ``rrc_top``,
    ``rrc_left``, ``rrc_height``, ``rrc_width`` (``[B]`` int64, pixels)."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    size: int | None = None
    input_size: int | tuple[int, int] = 32
    keys = ("rrc_top", "rrc_left", "rrc_height", "rrc_width")

    def __post_init__(self):
        side = self.input_size
        object.__setattr__(self, "input_size", (side, side) if isinstance(side, int) else tuple(side))
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))
        if len(self.input_size) != 2 or min(self.input_size) < 1 or (self.size is not None and self.size < 1):
            raise ValueError(f"RandomResizedCrop sizes must be >= 1, got input_size={side}, size={self.size}")
        for name, (lo, hi, *more) in (("scale", self.scale), ("ratio", self.ratio)):
            if more or not 0 < lo <= hi:
                raise ValueError(f"RandomResizedCrop {name} must be (min, max), 0 < min <= max, got {(lo, hi, *more)}")

    @property
    def output_size(self) -> tuple[int, int]:
        return self.input_size if self.size is None else (self.size, self.size)

    def attempts(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """The random numbers of the rule, drawn as torchvision draws them, for every
        image at once: area fractions and aspect ratios ``[10, B]`` float32 (``uniform_``
        and ``exp`` of a ``uniform_`` log-ratio), then top and left fractions ``[B]``
        float64 in ``[0, 1)`` (torchvision's ``randint(0, H - h + 1)`` is
        ``floor(u * (H - h + 1))``)."""
        dev, shape = generator.device, (ATTEMPTS, batch_size)
        log_ratio = torch.log(torch.tensor(self.ratio)).tolist()  # float32 values, as torchvision's
        area = torch.empty(shape, device=dev).uniform_(*self.scale, generator=generator)
        aspect = torch.empty(shape, device=dev).uniform_(*log_ratio, generator=generator).exp_()
        top, left = torch.rand(2, batch_size, dtype=torch.float64, device=dev, generator=generator)
        return area, aspect, top, left

    def boxes(self, area: torch.Tensor, aspect: torch.Tensor, top: torch.Tensor,
              left: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rule on the numbers of :meth:`attempts`, vectorized over the batch."""
        h, w = (torch.full(top.shape, v, dtype=torch.int64, device=top.device) for v in self.input_size)
        return boxes_of(area, aspect, top, left, h, w, self.ratio)

    def draw(self, batch_size, generator):
        return self.boxes(*self.attempts(batch_size, generator))

    def apply(self, images, params):
        if tuple(images.shape[-2:]) != self.input_size:
            raise ValueError(f"RandomResizedCrop(input_size={self.input_size}) got {tuple(images.shape[-2:])} images")
        return resized_crop(images, *(params[k] for k in self.keys), self.output_size)


def boxes_of(area: torch.Tensor, aspect: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
             heights: torch.Tensor, widths: torch.Tensor, ratio: tuple[float, float]) -> dict[str, torch.Tensor]:
    """torchvision's ``RandomResizedCrop`` rule on the numbers of
    :meth:`RandomResizedCrop.attempts` (``[10, B]`` area fractions and aspect ratios, ``[B]``
    top and left fractions) for images of ``heights x widths`` (``[B]`` int64, each its
    own size): the first of the 10 boxes that fits, at a uniform position, else the
    central crop of the image's ratio clamped into ``ratio``. ``{rrc_top, rrc_left,
    rrc_height, rrc_width}``, ``[B]`` int64 pixels."""
    h, w = heights.double(), widths.double()
    target, aspect = area.double() * (h * w), aspect.double()
    box_w, box_h = (target * aspect).sqrt_().round_(), (target / aspect).sqrt_().round_()  # half to even
    fits = (box_w > 0) & (box_w <= w) & (box_h > 0) & (box_h <= h)
    first = fits.to(torch.uint8).argmax(0, keepdim=True)  # the first attempt that fits
    found = fits.any(0)
    # The fallback: the whole image where its ratio is inside ``ratio``, else clamped to it.
    narrow, wide = w / h < ratio[0], w / h > ratio[1]
    fallback_h = torch.where(narrow, (w / ratio[0]).round(), h)
    fallback_w = torch.where(wide, (h * ratio[1]).round(), w)
    height = torch.where(found, box_h.gather(0, first)[0], fallback_h).long()
    width = torch.where(found, box_w.gather(0, first)[0], fallback_w).long()

    def place(u, room):  # uniform in 0 .. room where found, the centre otherwise
        return torch.where(found, torch.minimum((u * (room + 1)).long(), room), room // 2)

    return {"rrc_top": place(top, heights - height), "rrc_left": place(left, widths - width),
            "rrc_height": height, "rrc_width": width}
