"""FixMatch's strong augmentation as ops of a view: RandAugment over FixMatch's op pool, then Cutout.

FixMatch (Sohn et al., 2020, section 2.3) makes its strong view with RandAugment, drawing
the transformations of each sample at random, followed by Cutout. The semantics are those of the reference PyTorch port (kekmodel/FixMatch-pytorch,
``dataset/randaugment.py``, ``RandAugmentMC(n=2, m=10)``), per image: ``num_ops`` ops drawn
with replacement from ``ops``, each at a level ``v`` uniform in ``1 .. m - 1``
(``np.random.randint(1, m)``) and applied with probability 0.5; then ``CutoutAbs(img, 16)``.
The ops themselves, batched and per image, are :mod:`pipelines.randaugment_ops`.

    RandAugment(num_ops, magnitude_max, prob, ops)   ra{j}_op, ra{j}_level, ra{j}_sign, ra{j}_apply
    Cutout(fraction, fill)                           cutout_y, cutout_x
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from pipelines.augment import read_windows
from pipelines.errors import unknown_name
from pipelines.randaugment_ops import (
    FIXMATCH_OPS,
    PARAMETER_MAX,
    STRONG_OPS,
    reference_op,
)
from pipelines.views import Op

__all__ = [
    "CUTOUT_RESOLUTION",
    "FIXMATCH_OPS",
    "STRONG_OPS",
    "Cutout",
    "RandAugment",
    "reference_cutout",
    "reference_rand_augment",
]

CUTOUT_RESOLUTION = 1 << 16  # cutout centres are drawn in 1/65536ths of the image side


def reference_rand_augment(images: torch.Tensor, params: Mapping[str, torch.Tensor],
                           ops: Sequence[str] = FIXMATCH_OPS) -> torch.Tensor:
    """:class:`RandAugment` image by image, slot by slot: ``[B, 3, H, W]`` uint8 -> new uint8."""
    slots = range(sum(1 for k in params if k.startswith("ra") and k.endswith("_op")))
    p = {k: v.tolist() for k, v in params.items()}
    out = []
    for i, image in enumerate(images):
        for j in slots:
            if p[f"ra{j}_apply"][i]:
                image = reference_op(image, ops[p[f"ra{j}_op"][i]], p[f"ra{j}_level"][i], p[f"ra{j}_sign"][i])
        out.append(image)
    return torch.stack(out)


def reference_cutout(images: torch.Tensor, params: Mapping[str, torch.Tensor], fraction: float = 0.5,
                     fill: int = 127) -> torch.Tensor:
    """:class:`Cutout` image by image, in the port's ``CutoutAbs`` words (Python floats)."""
    out = images.clone()
    _, _, h, w = images.shape
    v = int(fraction * min(h, w))
    for i, (cy, cx) in enumerate(zip(params["cutout_y"].tolist(), params["cutout_x"].tolist())):
        x0, y0 = cx / CUTOUT_RESOLUTION * w, cy / CUTOUT_RESOLUTION * h  # uniform(0, w), uniform(0, h)
        x0, y0 = int(max(0, x0 - v / 2.0)), int(max(0, y0 - v / 2.0))
        x1, y1 = int(min(w, x0 + v)), int(min(h, y0 + v))
        out[i, :, y0 : y1 + 1, x0 : x1 + 1] = fill  # PIL's rectangle includes both corners
    return out


@dataclass(frozen=True)
class RandAugment(Op):
    """FixMatch's RandAugment (``RandAugmentMC(n=num_ops, m=magnitude_max)``): per image and
    slot ``j``, op ``ops[ra{j}_op]`` at level ``ra{j}_level`` in ``1 .. magnitude_max - 1``,
    negated where ``ra{j}_sign`` is 1 (geometric ops), applied where ``ra{j}_apply`` is 1
    (probability ``prob``). Per slot, the images of each op are taken with ``index_select``
    and transformed together (work follows the images); one ``index_select`` of the batch
    and the results puts them back (cheaper on the CPU than an ``index_copy_`` per op).
    images: ``[B, 3, H, W]`` uint8; params: ``[B]`` int on any device."""

    num_ops: int = 2
    magnitude_max: int = 10
    prob: float = 0.5
    ops: tuple[str, ...] = FIXMATCH_OPS

    def __post_init__(self):
        object.__setattr__(self, "ops", tuple(self.ops))
        for name in self.ops:
            if name not in STRONG_OPS:
                raise unknown_name("RandAugment op", name, STRONG_OPS)
        if not self.ops:
            raise ValueError(f"RandAugment needs at least one op; valid: {', '.join(FIXMATCH_OPS)}")
        if self.num_ops < 1:
            raise ValueError(f"RandAugment num_ops must be >= 1, got {self.num_ops}")
        if not 2 <= self.magnitude_max <= PARAMETER_MAX:
            raise ValueError(f"RandAugment magnitude_max must be in [2, {PARAMETER_MAX}] (levels are "
                             f"1 .. magnitude_max - 1), got {self.magnitude_max}")
        if not 0 <= self.prob <= 1:
            raise ValueError(f"RandAugment prob must be in [0, 1], got {self.prob}")

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f"ra{j}_{k}" for j in range(self.num_ops) for k in ("op", "level", "sign", "apply"))

    def draw(self, batch_size, generator):
        dev, shape, out = generator.device, (batch_size,), {}
        for j in range(self.num_ops):
            out[f"ra{j}_op"] = torch.randint(len(self.ops), shape, generator=generator, device=dev)
            out[f"ra{j}_level"] = torch.randint(1, self.magnitude_max, shape, generator=generator, device=dev)
            out[f"ra{j}_sign"] = torch.randint(2, shape, generator=generator, device=dev)
            out[f"ra{j}_apply"] = (torch.rand(shape, generator=generator, device=dev) < self.prob).long()
        return out

    def apply(self, images, params):
        dev, b, idle = images.device, images.shape[0], len(self.ops)
        out = images
        for j in range(self.num_ops):
            op, level, sign, on = (params[f"ra{j}_{k}"].to(dev, torch.int64) for k in ("op", "level", "sign", "apply"))
            key = torch.where(on.bool(), op, idle)  # switched-off images sort last
            order = torch.argsort(key, stable=True)
            counts = torch.bincount(key, minlength=idle + 1).tolist()  # the one sync of a slot
            staged, taken, start = [out], [], 0
            for name, count in zip(self.ops, counts):
                fn, chosen = STRONG_OPS[name], order[start : start + count]
                start += count
                if fn is not None and count:
                    staged.append(fn(out.index_select(0, chosen), level.index_select(0, chosen),
                                     sign.index_select(0, chosen)))
                    taken.append(chosen)
            if taken:  # one gather puts every transformed image in its place
                source = torch.arange(b, device=dev).index_copy_(0, torch.cat(taken), torch.arange(b, b + sum(
                    len(t) for t in taken), device=dev))
                out = torch.cat(staged).index_select(0, source)
        return out.clone() if out is images else out


@dataclass(frozen=True)
class Cutout(Op):
    """The port's ``CutoutAbs(img, v)``, ``v = int(fraction * min(H, W))`` (16 at 32 x 32):
    a square of ``fill`` (127 grey) about a uniform centre.

    ``cutout_y``, ``cutout_x``: ``[B]`` int64 in ``[0, CUTOUT_RESOLUTION)``; the centre is
    ``u = cutout_x / CUTOUT_RESOLUTION * W`` (the port's ``uniform(0, w)``, on a grid of
    ``W / 65536`` pixels; exactly uniform over pixels when W divides 65536), likewise y.
    Then, as the port: ``x0 = int(max(0, u - v / 2))``, ``x1 = min(W, x0 + v)``, and PIL's
    ``rectangle((x0, y0, x1, y1))`` fills columns ``x0 .. x1`` *inclusive*: ``v + 1`` pixels
    (17 at 32) unless clipped by the border. Batched: integer arithmetic, then one row
    gather of a canvas (:meth:`windows`) and a multiply-add over the batch."""

    fraction: float = 0.5
    fill: int = 127
    keys = ("cutout_y", "cutout_x")

    def __post_init__(self):
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"cutout fraction must be in [0, 1], got {self.fraction}")
        if not 0 <= self.fill <= 255:
            raise ValueError(f"cutout fill must be in [0, 255], got {self.fill}")

    def draw(self, batch_size, generator):
        dev = generator.device
        return {k: torch.randint(CUTOUT_RESOLUTION, (batch_size,), generator=generator, device=dev)
                for k in self.keys}

    def windows(self, images: torch.Tensor, params: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(keep, paint)``, each ``[B, 1, H, W]`` uint8: 0 and ``fill`` on the square, 1
        and 0 elsewhere, so the cut image is ``images * keep + paint``. Both are windows
        (:func:`~pipelines.augment.read_windows`, one run copied per channel) of a
        ``2H x 2W`` canvas with the square at ``(H, W)``: the window at
        ``(H - y0, W - x0)`` puts it at ``(y0, x0)``, cut by the border like PIL's."""
        _, _, h, w = images.shape
        v, dev = int(self.fraction * min(h, w)), images.device
        canvas = _cutout_canvas(h, w, v, self.fill, dev)

        def first(drawn, side):  # the port's x0 = int(max(0, u - v / 2)), u = drawn * side / R, in integers
            twice = 2 * drawn.to(dev, torch.int64) * side - v * CUTOUT_RESOLUTION
            return twice.div_(2 * CUTOUT_RESOLUTION, rounding_mode="floor").clamp_(min=0)

        y0, x0 = first(params["cutout_y"], h), first(params["cutout_x"], w)
        zeros = torch.zeros_like(y0)
        cut = read_windows(canvas, zeros, h - y0, w - x0, zeros, (h, w))
        return cut[:, :1], cut[:, 1:]

    def apply(self, images, params):
        keep, paint = self.windows(images, params)
        return images.mul(keep).add_(paint)

    def apply_(self, images, params):
        keep, paint = self.windows(images, params)
        return images.mul_(keep).add_(paint)


@functools.cache
def _cutout_canvas(h: int, w: int, v: int, fill: int, device: torch.device) -> torch.Tensor:
    """``[1, 1, 2, 2H, 2W]`` uint8 (the layout of ``read_windows``): channel 0 is 1 but 0 on
    the ``(v + 1)``-pixel square at ``(H, W)``, channel 1 is ``fill`` on the square."""
    canvas = torch.zeros(1, 1, 2, 2 * h, 2 * w, dtype=torch.uint8)
    canvas[:, :, 0] = 1
    canvas[:, :, 0, h : h + v + 1, w : w + v + 1] = 0
    canvas[:, :, 1, h : h + v + 1, w : w + v + 1] = fill
    return canvas.to(device)
