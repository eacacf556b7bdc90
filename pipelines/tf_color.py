"""The colour jitter of G-SimCLR's notebooks: TF's ``tf.image`` colour ops, batched.

The notebooks' ``CustomAugment._color_jitter(x, s=0.2)`` on float pixels in [0, 1]:

    x = tf.image.random_brightness(x, max_delta=0.8*s)           # x + delta
    x = tf.image.random_contrast(x, lower=1-0.8*s, upper=1+0.8*s)  # mean + f (x - mean), per channel
    x = tf.image.random_saturation(x, lower=1-0.8*s, upper=1+0.8*s)  # HSV: s = clip(s f, 0, 1)
    x = tf.image.random_hue(x, max_delta=0.2*s)                  # HSV: h + delta, wrapped
    x = tf.clip_by_value(x, 0, 1)

in that fixed order, nothing clipped in between. :class:`TFColorJitter` repeats the float32
arithmetic of TF's CPU kernels (``adjust_contrast_op.cc``, ``adjust_saturation_op.cc``,
``adjust_hue_op.cc``) on a ``[B, 3, H, W]`` uint8 batch with per-image factors, and rounds
the clipped result to uint8 (``round(255 x)``: the notebooks keep floats). The per-channel
mean is taken in float64 and rounded to float32 (TF folds float32 sums). Its per-image
reference, pixel by pixel in numpy float32 scalars, is :func:`reference_tf_color_jitter`.

    TFColorJitter(strength, p)    tfj_apply, tfj_brightness, tfj_contrast, tfj_saturation, tfj_hue
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.views import Op

__all__ = ["TF_JITTER_OPS", "TFColorJitter", "reference_tf_color_jitter"]

RESOLUTION = 1 << 16  # factors are drawn in 1/65536ths of their range
TF_JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # the notebooks' order, fixed

# hsv_to_rgb of adjust_saturation_op.cc: sector -> which of (c, x, 0) each of r, g, b takes; sector 6
# (h rounded up to 1) is its ``default`` case, black before the ``+ m``.
_SAT_TABLE = ((0, 1, 2), (1, 0, 2), (2, 0, 1), (2, 1, 0), (1, 2, 0), (0, 2, 1), (2, 2, 2))
# hv_range_to_rgb of adjust_hue_op.cc: sector -> which of (max, mid, min) each of r, g, b takes.
_HUE_TABLE = ((0, 1, 2), (1, 0, 2), (2, 0, 1), (2, 1, 0), (1, 2, 0), (0, 2, 1))


def _pick(table, sector: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``[n, 3, H, W]``: channel ``k`` of each pixel takes ``values[table[sector][k]]``;
    ``values`` ``[3, n, H, W]``, ``sector`` ``[n, H, W]`` int64."""
    idx = torch.tensor(table, device=sector.device)[sector]  # [n, H, W, 3]
    return torch.gather(values.permute(1, 2, 3, 0), 3, idx).permute(0, 3, 1, 2)


def _saturation(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``AdjustSaturation``: ``x`` ``[n, 3, H, W]`` float32, ``scale`` ``[n]`` float32."""
    r, g, b = x.unbind(1)
    v = torch.maximum(r, torch.maximum(g, b))
    span = v - torch.minimum(r, torch.minimum(g, b))
    s = torch.where(v > 0, span / v, torch.zeros_like(v))
    norm = 1.0 / (6.0 * span)
    # ``norm * (b - r) + 2.0 / 6.0``: a float product added to a double constant, then stored as float.
    h = torch.where(r == v, norm * (g - b), torch.where(
        g == v, ((norm * (b - r)).double() + 2.0 / 6.0).float(), ((norm * (r - g)).double() + 4.0 / 6.0).float()))
    h = torch.where(span <= 0, torch.zeros_like(h), h)
    h = torch.where(h < 0, h + 1, h)
    s = (s * scale.view(-1, 1, 1)).clamp(0.0, 1.0)
    c = s * v
    m = v - c
    dh = h * 6
    sector = dh.to(torch.int64)  # static_cast<int>: h in [0, 1] here, so trunc
    fmodu = torch.remainder(dh, 2.0)  # the kernel's loops: exact, and 0 at dh = 0
    xx = c * (1 - (fmodu - 1).abs())
    return _pick(_SAT_TABLE, sector, torch.stack([c, xx, torch.zeros_like(c)])) + m[:, None]


def _hue(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``AdjustHue``: ``x`` ``[n, 3, H, W]`` float32, ``delta`` ``[n]`` float32 in [-0.5, 0.5]."""
    r, g, b = x.unbind(1)
    # rgb_to_hv_range: (max, mid, min, sector) by the kernel's comparisons, ties as it breaks them.
    lt = r < g
    a1, a3 = lt & (b < r), lt & ~(b < r) & (b > g)
    b0, b4 = ~lt & (b < g), ~lt & ~(b < g) & (b > r)
    vmax = torch.where(lt, torch.where(a3, b, g), torch.where(b4, b, r))
    vmid = torch.where(lt, torch.where(a1, r, torch.where(a3, g, b)), torch.where(b0, g, torch.where(b4, r, b)))
    vmin = torch.where(lt, torch.where(a1, b, r), torch.where(b0, b, g))
    sector = torch.where(lt, torch.where(a1, 1, torch.where(a3, 3, 2)), torch.where(b0, 0, torch.where(b4, 4, 5)))
    ratio = (vmid - vmin) / (vmax - vmin)
    odd = (sector % 2).bool()
    h = sector.float() + torch.where(odd, 1 - ratio, ratio)
    h = torch.where(vmax == vmin, torch.zeros_like(h), h)
    h = h + delta.view(-1, 1, 1) * 6
    h = torch.where(h < 0, h + 6, h)  # |delta * 6| <= 3: one turn at most, as the kernel's loops
    h = torch.where(h >= 6, h - 6, h)
    sector = h.to(torch.int64)
    ratio = h - sector.float()
    ratio = torch.where((sector % 2).bool(), 1 - ratio, ratio)
    vmid = vmin + ratio * (vmax - vmin)
    return _pick(_HUE_TABLE, sector, torch.stack([vmax, vmid, vmin]))


@dataclass(frozen=True)
class TFColorJitter(Op):
    """With probability ``p`` per image, the notebooks' ``_color_jitter`` of strength ``s``:
    brightness ``+ U(-0.8s, 0.8s)``, contrast and saturation factors ``U(1 - 0.8s, 1 + 0.8s)``,
    hue ``+ U(-0.2s, 0.2s)`` of a turn, in that order, then clipped to [0, 1].

    ``tfj_apply`` 0/1; ``tfj_<op>`` in ``[0, RESOLUTION)``, the factor ``lo + (hi - lo) k /
    65536`` rounded to float32 (:meth:`factors`). images: ``[B, 3, H, W]`` uint8 of any
    strides; params: ``[B]`` int64 on any device; returns a new uint8 batch."""

    strength: float = 0.2
    p: float = 0.5
    keys = ("tfj_apply", *(f"tfj_{name}" for name in TF_JITTER_OPS))

    def __post_init__(self):
        if not 0 <= self.strength <= 1.25:
            raise ValueError(f"TF colour jitter strength must be in [0, 1.25] (factors >= 0), got {self.strength}")
        if not 0 <= self.p <= 1:
            raise ValueError(f"TF colour jitter probability must be in [0, 1], got {self.p}")

    @property
    def ranges(self) -> tuple[tuple[float, float], ...]:
        """``(lo, hi)`` of each of :data:`TF_JITTER_OPS` (``tf.image.random_*``'s arguments)."""
        s = self.strength
        return (-0.8 * s, 0.8 * s), (1 - 0.8 * s, 1 + 0.8 * s), (1 - 0.8 * s, 1 + 0.8 * s), (-0.2 * s, 0.2 * s)

    def factors(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[4, B]`` float32: each image's brightness delta, contrast and saturation factor, hue delta."""
        return torch.stack([params[f"tfj_{name}"].double().mul(hi - lo).div(RESOLUTION).add(lo)
                            for name, (lo, hi) in zip(TF_JITTER_OPS, self.ranges)]).float()

    def draw(self, batch_size, generator):
        dev, shape = generator.device, (batch_size,)
        return {"tfj_apply": (torch.rand(shape, generator=generator, device=dev) < self.p).long(),
                **{f"tfj_{name}": torch.randint(RESOLUTION, shape, generator=generator, device=dev)
                   for name in TF_JITTER_OPS}}

    def apply(self, images, params):
        dev = images.device
        chosen = params["tfj_apply"].to(dev).nonzero().squeeze(1)  # one sync
        out = images.clone(memory_format=torch.contiguous_format)
        if not len(chosen):
            return out
        bright, contrast, sat, hue = self.factors(params).to(dev).index_select(1, chosen)
        x = images.index_select(0, chosen).float().div_(255) + bright.view(-1, 1, 1, 1)
        mean = x.double().mean(dim=(2, 3), keepdim=True).float()  # per image and channel
        x = mean + contrast.view(-1, 1, 1, 1) * (x - mean)
        x = _hue(_saturation(x, sat), hue).clamp_(0.0, 1.0)
        out[chosen] = x.mul_(255).round_().to(torch.uint8)
        return out


# ------------------------------------------------------------------ the per-image reference
def _sat_pixel(r, g, b, scale):
    """adjust_saturation_op.cc's loop body on one pixel, float32 scalars."""
    f = np.float32
    vv = max(r, max(g, b))
    rng = vv - min(r, min(g, b))
    s = rng / vv if vv > 0 else f(0)
    norm = f(1) / (f(6) * rng) if rng != 0 else f(np.inf)
    if r == vv:
        hh = norm * (g - b)
    elif g == vv:
        hh = f(np.float64(norm * (b - r)) + 2.0 / 6.0)
    else:
        hh = f(np.float64(norm * (r - g)) + 4.0 / 6.0)
    if rng <= 0:
        hh = f(0)
    if hh < 0:
        hh = hh + f(1)
    s = min(f(1), max(f(0), s * scale))
    c, dh = s * vv, hh * f(6)
    m, cat, fmodu = vv - c, int(dh), dh
    while fmodu <= 0:
        fmodu += f(2)
    while fmodu >= 2:
        fmodu -= f(2)
    x, z = c * (f(1) - abs(fmodu - f(1))), f(0)
    table = {0: (c, x, z), 1: (x, c, z), 2: (z, c, x), 3: (z, x, c), 4: (x, z, c), 5: (c, z, x)}
    rr, gg, bb = table.get(cat, (z, z, z))
    return rr + m, gg + m, bb + m


def _hue_pixel(r, g, b, delta):
    """adjust_hue_op.cc's loop body on one pixel, float32 scalars."""
    f = np.float32
    if r < g:
        vmax, vmid, vmin, cat = (g, r, b, 1) if b < r else (b, g, r, 3) if b > g else (g, b, r, 2)
    else:
        vmax, vmid, vmin, cat = (r, g, b, 0) if b < g else (b, r, g, 4) if b > r else (r, b, g, 5)
    if vmax == vmin:
        h = f(0)
    else:
        ratio = (vmid - vmin) / (vmax - vmin)
        h = f(cat) + (ratio if cat % 2 == 0 else f(1) - ratio)
    h = h + delta * f(6)
    while h < 0:
        h += f(6)
    while h >= 6:
        h -= f(6)
    cat = int(h)
    ratio = h - f(cat)
    if cat % 2:
        ratio = f(1) - ratio
    vmid = vmin + ratio * (vmax - vmin)
    return {0: (vmax, vmid, vmin), 1: (vmid, vmax, vmin), 2: (vmin, vmax, vmid), 3: (vmin, vmid, vmax),
            4: (vmid, vmin, vmax)}.get(cat, (vmax, vmin, vmid))


def reference_tf_color_jitter(images: torch.Tensor, params: Mapping[str, torch.Tensor],
                              strength: float = 0.2) -> torch.Tensor:
    """:class:`TFColorJitter` image by image and pixel by pixel (TF's kernels' loops on
    numpy float32 scalars): ``[B, 3, H, W]`` uint8 -> new uint8. Slow: for tests."""
    factors = TFColorJitter(strength).factors(params).numpy()
    out = images.clone()
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, on in enumerate(params["tfj_apply"].tolist()):
            if not on:
                continue
            bright, contrast, sat, hue = (np.float32(v) for v in factors[:, i])
            x = (images[i].permute(1, 2, 0).numpy().astype(np.float32) / np.float32(255)) + bright  # [H, W, 3]
            mean = x.astype(np.float64).mean(axis=(0, 1)).astype(np.float32)
            x = mean + contrast * (x - mean)
            for y, row in enumerate(x):
                for col, (r, g, b) in enumerate(row):
                    row[col] = _hue_pixel(*_sat_pixel(r, g, b, sat), hue)
            x = np.clip(x, np.float32(0), np.float32(1))
            out[i] = torch.from_numpy(np.round(x * np.float32(255)).astype(np.uint8)).permute(2, 0, 1)
    return out
