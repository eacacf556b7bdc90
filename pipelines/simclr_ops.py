"""SimCLR's view: colour jitter as one batched op with per-sample parameters, its
per-image reference, and the chain of the view.

SimCLR (Chen et al., 2020, appendix A): "random crop and resize (with random flip), color
distortion, and Gaussian blur": torchvision's ``RandomResizedCrop``, ``RandomHorizontalFlip``,
``RandomApply([ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)], p=0.8)``, ``RandomGrayscale(p=0.2)``;
no blur on CIFAR. :func:`simclr_view` chains them: :mod:`pipelines.resized_crop`'s
``RandomResizedCrop``, :mod:`pipelines.views`' ``CropFlip(padding=0)`` as the flip,
``ColorJitter`` below and ``Grayscale(0.2)``.

    ColorJitter(strength, p)    cj_apply, cj_order, cj_brightness, cj_contrast, cj_saturation, cj_hue

G-SimCLR's notebooks use another view (:func:`authors_view`): a flip and TF's colour ops
(:mod:`pipelines.tf_color`), no crop, no grayscale.

It equals torchvision (``transforms.v2.functional`` on uint8 CPU tensors) image by image,
pixel for pixel (:func:`reference_color_jitter`): the colour ops repeat torchvision's
float32 arithmetic with per-sample ``[n, 1, 1, 1]`` factors; the hue's masks, ``where``
and gather become bit-identical float arithmetic (:func:`_hue`), many times cheaper on
the CPU.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF

from pipelines.randaugment_ops import _luma
from pipelines.resized_crop import RandomResizedCrop
from pipelines.tf_color import TFColorJitter
from pipelines.views import CropFlip, Grayscale, Op, PerBatch

__all__ = ["JITTER_OPS", "JITTER_ORDERS", "RESOLUTION", "ColorJitter", "authors_view", "reference_color_jitter",
           "simclr_view"]

RESOLUTION = 1 << 16  # jitter factors are drawn in 1/65536ths of their range
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # torchvision's fn_idx 0 .. 3
JITTER_ORDERS: tuple[tuple[int, ...], ...] = tuple(itertools.permutations(range(4)))  # cj_order -> op order


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float in ``[0, 256)`` -> uint8, truncating; through int32, ~4x faster on the CPU."""
    return x.to(torch.int32).to(torch.uint8)


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
                input_size: int | tuple[int, int] = 32, scale: tuple[float, float] = (0.08, 1.0),
                p: float = 0.8) -> tuple[Op, ...]:
    """SimCLR's augmentation: random resized crop to ``size`` (the input size when None) of
    ``input_size`` images, left-right flip, colour jitter of ``strength`` with probability
    ``p`` (0.8), grayscale with p 0.2. ``blur`` (SimCLR's ImageNet Gaussian blur) is not implemented."""
    if blur:
        raise ValueError("simclr_view: Gaussian blur is not implemented (SimCLR uses none on CIFAR)")
    return (RandomResizedCrop(scale=scale, size=size, input_size=input_size), CropFlip(padding=0, hflip=True),
            ColorJitter(strength, p), Grayscale(0.2))


def authors_view(strength: float = 0.2, p: float = 0.5, *, per_batch: bool = False) -> tuple[Op, ...]:
    """G-SimCLR's notebooks' ``CustomAugment``: a left-right flip with p 0.5, then TF's colour
    jitter of ``strength`` with probability ``p`` (:class:`pipelines.tf_color.TFColorJitter`);
    no crop, no grayscale (their ``_color_drop`` returns its input). ``per_batch``: one draw
    for the whole batch, as the notebooks' Keras layer on the batch tensor (:class:`PerBatch`)."""
    ops = (CropFlip(padding=0, hflip=True), TFColorJitter(strength, p))
    return tuple(PerBatch(op) for op in ops) if per_batch else ops
