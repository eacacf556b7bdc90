"""SimCLR's view as batched ops with per-sample parameters, and their per-image reference.

SimCLR (Chen et al., 2020, appendix A): "random crop and resize (with random flip), color
distortion, and Gaussian blur": torchvision's ``RandomResizedCrop``, ``RandomHorizontalFlip``,
``RandomApply([ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)], p=0.8)``, ``RandomGrayscale(p=0.2)``;
no blur on CIFAR. :func:`simclr_view` chains them, with :mod:`pipelines.views`'
``CropFlip(padding=0)`` as the flip and ``Grayscale(0.2)``.

    RandomResizedCrop(scale, ratio, size, input_size)   rrc_top, rrc_left, rrc_height, rrc_width
    ColorJitter(strength, p)                            cj_apply, cj_order, cj_brightness,
                                                        cj_contrast, cj_saturation, cj_hue

Both equal torchvision (``transforms.v2.functional`` on uint8 CPU tensors) image by image,
pixel for pixel (:func:`reference_resized_crop`, :func:`reference_color_jitter`):

* the resize is its default bilinear with ``antialias=True``: on the CPU (AVX2 / AVX512 /
  arm64) PyTorch's uint8 kernel, separable passes (horizontal, then vertical) with Pillow's
  int16 fixed-point weights, each rounded and clamped to uint8 (:func:`_taps`). Ours scales
  those weights by ``2**-precision`` (exact) and runs each pass as one batched matmul of
  per-sample weight matrices, exact in float32 (float64 for weights of precision > 16).
  On CUDA torchvision resizes in float32; ours gives the CPU result on every device.
* the colour ops repeat torchvision's float32 arithmetic with per-sample ``[n, 1, 1, 1]``
  factors; the hue's masks, ``where`` and gather become bit-identical float arithmetic
  (:func:`_hue`), many times cheaper on the CPU.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from pipelines.randaugment_ops import _luma
from pipelines.views import CropFlip, Grayscale, Op

__all__ = ["JITTER_OPS", "JITTER_ORDERS", "RESOLUTION", "ColorJitter", "RandomResizedCrop", "reference_color_jitter",
           "reference_resized_crop", "resized_crop", "simclr_view"]

RESOLUTION = 1 << 16  # jitter factors are drawn in 1/65536ths of their range
ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its central fallback
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # torchvision's fn_idx 0 .. 3
JITTER_ORDERS: tuple[tuple[int, ...], ...] = tuple(itertools.permutations(range(4)))  # cj_order -> op order


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float in ``[0, 256)`` -> uint8, truncating; through int32, ~4x faster on the CPU."""
    return x.to(torch.int32).to(torch.uint8)


# ------------------------------------------------------------------ random resized crop
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
    the first box that fits is taken at a uniform position, else :meth:`_fallback`.

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
        h, w = self.input_size
        target, aspect = area.double() * (h * w), aspect.double()
        widths, heights = (target * aspect).sqrt_().round_(), (target / aspect).sqrt_().round_()  # half to even
        fits = (widths > 0) & (widths <= w) & (heights > 0) & (heights <= h)
        first = fits.to(torch.uint8).argmax(0, keepdim=True)  # the first attempt that fits
        found = fits.any(0)
        fallback_h, fallback_w = self._fallback()
        height = torch.where(found, heights.gather(0, first)[0], fallback_h).long()
        width = torch.where(found, widths.gather(0, first)[0], fallback_w).long()

        def place(u, room):  # uniform in 0 .. room where found, the centre otherwise
            return torch.where(found, torch.minimum((u * (room + 1)).long(), room), room // 2)

        return {"rrc_top": place(top, h - height), "rrc_left": place(left, w - width),
                "rrc_height": height, "rrc_width": width}

    def _fallback(self) -> tuple[int, int]:
        """torchvision's fallback: the central crop of the ratio clamped into ``ratio``."""
        h, w = self.input_size
        if w / h < self.ratio[0]:
            return round(w / self.ratio[0]), w
        if w / h > self.ratio[1]:
            return h, round(h * self.ratio[1])
        return h, w

    def draw(self, batch_size, generator):
        return self.boxes(*self.attempts(batch_size, generator))

    def apply(self, images, params):
        if tuple(images.shape[-2:]) != self.input_size:
            raise ValueError(f"RandomResizedCrop(input_size={self.input_size}) got {tuple(images.shape[-2:])} images")
        return resized_crop(images, *(params[k] for k in self.keys), self.output_size)


# ------------------------------------------------------------------ colour jitter
# Each takes ``images [n, 3, H, W] uint8, factor [n, 1, 1, 1] float64`` and returns a new uint8 batch.
def _brightness(images, factor):
    return _to_uint8(images.mul(factor.float()).clamp_(0, 255))


def _saturation(images, factor):
    """torchvision's ``_blend`` with the floored luma, ``x * f + luma * (1 - f)`` in float32,
    fused as its vector loop (``addcmul``), clamped, truncated."""
    x = images.float()  # what torchvision's uint8 arithmetic promotes to
    luma = _luma(x)
    return _to_uint8(x.mul_(factor.float()).addcmul_(luma, (1.0 - factor).float()).clamp_(0, 255))


def _contrast(images, factor):
    """Blend with the mean luma. Where torchvision's CPU ``add_(mean, alpha=1 - f)`` rounds
    ``f * x`` and ``(1 - f) * mean`` separately (a few scalar-tail pixels of an image whose
    ``3HW`` is not a multiple of 16, :func:`_unfused_pixels`), so do we, on every device."""
    x = images.float()
    mean = _luma(x).mean(dim=(-3, -2, -1), keepdim=True)
    scaled, alpha = x.mul_(factor.float()), (1.0 - factor).float()
    unfused = _unfused_pixels(tuple(images.shape[1:]), torch.get_num_threads())  # of the CPU reference
    if unfused is not None:
        n, unfused = len(images), unfused.to(images.device)
        tail = scaled.view(n, -1)[:, unfused] + (mean * alpha).view(n, 1)
    out = scaled.addcmul_(mean, alpha)
    if unfused is not None:
        out.view(n, -1)[:, unfused] = tail
    return _to_uint8(out.clamp_(0, 255))


@functools.cache
def _unfused_pixels(shape: tuple[int, ...], threads: int) -> torch.Tensor | None:
    """Where ``x.add_(y, alpha=a)`` with a one-value ``y`` rounds ``a * y`` before adding (its
    compiled scalar tail), found by running it once on ``x = -1``, ``y = a = 1 + 2**-12``,
    whose fused (``2**-11 + 2**-24``) and twice-rounded (``2**-11``) sums differ."""
    v = 1 + 2**-12
    out = torch.full(shape, -1.0).add_(torch.full((1,) * len(shape), v), alpha=v).view(-1)
    at = (out == 2**-11).nonzero().squeeze(1)
    return at if len(at) else None


_TINY = 1e-30  # stands in for a zero divisor; only ever divides zero


def _hue(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue`` on uint8 (``/ 255``, ``_rgb_to_hsv``, ``h + f mod 1``,
    ``_hsv_to_rgb``, ``* 255.999``), the same float32 roundings in the same order with
    cheaper equivalents: ``aminmax`` over channels as ``maximum``/``minimum``; ``where(eq,
    1, d)`` divisors as ``clamp_min`` (they only divide zero there); boolean masks as 0/1
    floats (``1 - sign(rc)`` is ``maxc == r``); ``fmod``/``remainder`` by 1 as
    ``x - floor(x)`` (equal on their ranges); the ``vpqt`` gather as a clamp of
    ``m + 4 e`` between ``p <= m <= v``, ``e`` = +1 / 0 / -1 picking ``v`` / ``m`` / ``p``."""
    # Written in place into a few buffers: fresh CPU tensors of this size cost page faults.
    x = images.to(torch.float32).mul_(1.0 / 255)
    r, g, b = x.unbind(1)
    v = torch.maximum(r, g)
    torch.maximum(v, b, out=v)  # maxc
    span = torch.minimum(r, g)
    torch.minimum(span, b, out=span).neg_().add_(v)  # maxc - minc
    s = v.clamp_min(_TINY)
    torch.div(span, s, out=s)
    torch.sub(v[:, None], x, out=x).div_(span.clamp_min_(_TINY)[:, None])
    rc, gc, bc = x.unbind(1)
    a = rc.sign().neg_().add_(1.0)  # maxc == r
    hg_mask = a.neg().add_(1.0)  # maxc != r; minus the next: and maxc == g
    hb_mask = gc.sign().mul_(hg_mask)  # maxc != g and maxc != r
    hg_mask.sub_(hb_mask)
    h = torch.sub(bc, gc).mul_(a)
    h += torch.add(rc, 2.0, out=a).sub_(bc).mul_(hg_mask)
    h += torch.add(gc, 4.0, out=hg_mask).sub_(rc).mul_(hb_mask)
    h.mul_(1.0 / 6.0).add_(1.0)  # the masks' buffers (a, hg_mask, hb_mask) are free from here
    h -= torch.floor(h, out=hb_mask)  # fmod(h, 1) on [5/6, 11/6]
    h += factor.float().view(-1, 1, 1)
    h -= torch.floor(h, out=hb_mask)  # remainder(h, 1) on (-1/2, 3/2)
    h6 = h.mul_(6)
    sector = torch.floor(h6, out=hb_mask)  # 0 .. 6; 6 (h6 == 6, f == 0) picks what 0 does
    sxf = torch.mul(s, h6.sub_(sector), out=h6)  # s * f
    one_minus_s = s.neg_().add_(1.0)
    q = torch.neg(sxf, out=hg_mask).add_(1.0).mul_(v).clamp_(0.0, 1.0)
    t = sxf.add_(one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(v).clamp_(0.0, 1.0)
    odd = torch.mul(sector, 0.5, out=a).floor_().mul_(-2.0).add_(sector)
    m = q.mul_(odd).add_(t.mul_(odd.neg_().add_(1.0)))  # q in odd sectors, t in even ones
    # Sectors 0 .. 5: r takes v, q, p, p, t, v; g takes t, v, v, q, p, p; b takes p, p, t, v, v, q.
    for ch, (centre, sign) in enumerate(((2.5, 4.0), (1.5, -4.0), (3.5, -4.0))):
        e = torch.sub(sector, centre, out=a).abs_().sub_(1.5).mul_(sign).add_(m)
        torch.clamp(e, min=p, max=v, out=x[:, ch])
    return _to_uint8(x.mul_(255 + 1.0 - 1e-3))


_JITTER = (_brightness, _contrast, _saturation, _hue)


@dataclass(frozen=True)
class ColorJitter(Op):
    """With probability ``p`` per image, torchvision's ``ColorJitter(0.8s, 0.8s, 0.8s,
    0.2s)`` (SimCLR's colour distortion of strength ``s``): brightness, contrast and
    saturation factors in ``[max(0, 1 - 0.8s), 1 + 0.8s]``, a hue shift in ``[-0.2s, 0.2s]``,
    applied in the order ``JITTER_ORDERS[cj_order]`` (torchvision's ``randperm(4)``).

    ``cj_apply`` 0/1; ``cj_order`` in ``0 .. 23``; ``cj_<op>`` in ``[0, RESOLUTION)``, the
    factor ``lo + (hi - lo) * k / 65536`` in float64 (torchvision's ``uniform_(lo, hi)`` on a
    grid of 1/65536 of the range; :meth:`factors`). Batched: per order slot, the images of
    each op are taken together (sorted by op, narrow slices); one ``index_select`` puts them
    back. images: ``[B, 3, H, W]`` uint8; params: ``[B]`` int on any device."""

    strength: float = 0.5
    p: float = 0.8
    keys = ("cj_apply", "cj_order", *(f"cj_{name}" for name in JITTER_OPS))

    def __post_init__(self):
        if not 0 <= self.strength <= 2.5:
            raise ValueError(f"colour jitter strength must be in [0, 2.5] (hue 0.2s <= 0.5), got {self.strength}")
        if not 0 <= self.p <= 1:
            raise ValueError(f"colour jitter probability must be in [0, 1], got {self.p}")

    @property
    def ranges(self) -> tuple[tuple[float, float], ...]:
        """``(lo, hi)`` of each of :data:`JITTER_OPS`, as torchvision's ``_check_input``."""
        s = self.strength
        factor = (max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s)
        return factor, factor, factor, (-0.2 * s, 0.2 * s)

    def factors(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[4, B]`` float64: each image's brightness, contrast, saturation and hue factor."""
        return torch.stack([params[f"cj_{name}"].double().mul(hi - lo).div(RESOLUTION).add(lo)
                            for name, (lo, hi) in zip(JITTER_OPS, self.ranges)])

    def draw(self, batch_size, generator):
        dev, shape = generator.device, (batch_size,)
        return {"cj_apply": (torch.rand(shape, generator=generator, device=dev) < self.p).long(),
                "cj_order": torch.randint(len(JITTER_ORDERS), shape, generator=generator, device=dev),
                **{f"cj_{name}": torch.randint(RESOLUTION, shape, generator=generator, device=dev)
                   for name in JITTER_OPS}}

    def apply(self, images, params):
        dev, b = images.device, images.shape[0]
        chosen = params["cj_apply"].to(dev).nonzero().squeeze(1)  # a sync, and one per order slot
        if not len(chosen) or self.strength == 0:  # torchvision skips ops with a range of {1} / {0}
            return images.clone()
        factors = self.factors(params).to(dev).index_select(1, chosen)
        orders = torch.tensor(JITTER_ORDERS, device=dev).index_select(0, params["cj_order"].to(dev)[chosen])
        x, rows = images.index_select(0, chosen), torch.arange(len(chosen), device=dev)
        for slot in range(4):
            op = orders[:, slot].index_select(0, rows)
            by_op = torch.argsort(op, stable=True)
            x, rows = x.index_select(0, by_op), rows.index_select(0, by_op)
            pieces, start = [], 0
            for k, count in enumerate(torch.bincount(op, minlength=4).tolist()):
                if count:
                    f = factors[k].index_select(0, rows[start : start + count]).view(-1, 1, 1, 1)
                    pieces.append(_JITTER[k](x[start : start + count], f))
                start += count
            x = torch.cat(pieces)
        # One gather puts every jittered image in its place (much cheaper than an index_copy_).
        source = torch.arange(b, device=dev).index_copy_(0, chosen.index_select(0, rows),
                                                         torch.arange(b, b + len(chosen), device=dev))
        return torch.cat([images, x]).index_select(0, source)


def reference_color_jitter(images: torch.Tensor, params: Mapping[str, torch.Tensor],
                           strength: float = 0.5) -> torch.Tensor:
    """:class:`ColorJitter` image by image: torchvision's ``adjust_*`` with Python floats in
    the drawn order; ``[B, 3, H, W]`` uint8 -> new uint8."""
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    factors = ColorJitter(strength).factors(params).tolist()
    out = images.clone()
    for i, (on, order) in enumerate(zip(params["cj_apply"].tolist(), params["cj_order"].tolist())):
        if on and strength > 0:
            for k in JITTER_ORDERS[order]:
                out[i] = fns[k](out[i], factors[k][i])
    return out


def simclr_view(size: int | None = None, strength: float = 0.5, blur: bool = False, *,
                input_size: int | tuple[int, int] = 32, scale: tuple[float, float] = (0.08, 1.0)) -> tuple[Op, ...]:
    """SimCLR's augmentation: random resized crop to ``size`` (the input size when None) of
    ``input_size`` images, left-right flip, colour jitter of ``strength`` with p 0.8,
    grayscale with p 0.2. ``blur`` (SimCLR's ImageNet Gaussian blur) is not implemented."""
    if blur:
        raise ValueError("simclr_view: Gaussian blur is not implemented (SimCLR uses none on CIFAR)")
    return (RandomResizedCrop(scale=scale, size=size, input_size=input_size), CropFlip(padding=0, hflip=True),
            ColorJitter(strength, 0.8), Grayscale(0.2))
