"""FixMatch's RandAugment op pool as batched uint8 ops with per-sample levels, and their
per-image reference.

The pool and the level -> argument rule are those of the reference PyTorch port of
FixMatch (kekmodel/FixMatch-pytorch, ``dataset/randaugment.py``, ``fixmatch_augment_pool``):

* float arguments ``v * max_v / 10 + bias``, int arguments ``int(v * max_v / 10) + bias``
  (:func:`op_argument`); Rotate, Shear and Translate negate theirs when ``sign`` is 1;
  Translate moves ``int(value * side)`` pixels; Solarize's threshold is ``256 - value``.
* geometric ops sample nearest-neighbour and fill with black (0): PIL's defaults for
  ``Image.rotate`` and ``Image.transform``, which the port calls without ``fillcolor``.
  Shears are about the top-left corner (PIL's affine), rotations about the centre.

The image semantics are torchvision's tensor ops (``torchvision.transforms.v2.functional``,
written to follow PIL), applied per image with Python scalars in :func:`reference_op`;
``tests/pipelines/test_randaugment.py`` records how close they are to PIL. The batched ops
of :data:`STRONG_OPS` equal them pixel for pixel: colour ops repeat torchvision's float32
arithmetic with per-sample ``[n, 1, 1, 1]`` factors (its blends round once, a fused
multiply-add, so ours use ``addcmul``); the warps gather through source-pixel maps that
torchvision's own grid computes, once per (op, level, sign, size), on the CPU.
:class:`pipelines.randaugment.RandAugment` draws and applies them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

PARAMETER_MAX = 10  # the port's level scale: an argument is ``level / 10`` of its ``max_v``

# kekmodel's fixmatch_augment_pool(): name -> (max_v, bias); None for ops without argument.
FIXMATCH_POOL: dict[str, tuple[float, float] | None] = {
    "AutoContrast": None,
    "Brightness": (0.9, 0.05),
    "Color": (0.9, 0.05),
    "Contrast": (0.9, 0.05),
    "Equalize": None,
    "Identity": None,
    "Posterize": (4, 4),
    "Rotate": (30, 0),
    "Sharpness": (0.9, 0.05),
    "ShearX": (0.3, 0),
    "ShearY": (0.3, 0),
    "Solarize": (256, 0),
    "TranslateX": (0.3, 0),
    "TranslateY": (0.3, 0),
}
FIXMATCH_OPS: tuple[str, ...] = tuple(FIXMATCH_POOL)
_INT_ARGUMENT = {"Posterize", "Rotate", "Solarize"}  # the port's _int_parameter
_SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}


def op_argument(name: str, level: int, sign: int, size: tuple[int, int]) -> float | int | None:
    """The argument the port passes to PIL for op ``name`` at ``level`` on an image of
    ``size = (H, W)``: an enhance factor, Posterize's bits, Solarize's threshold, Rotate's
    degrees (counter-clockwise), a shear coefficient or a translation in pixels; None for
    AutoContrast, Equalize and Identity. ``sign`` 1 negates the geometric ones."""
    pool = FIXMATCH_POOL[name]
    if pool is None:
        return None
    max_v, bias = pool
    if name in _INT_ARGUMENT:
        value = int(level * max_v / PARAMETER_MAX) + bias
    else:
        value = float(level) * max_v / PARAMETER_MAX + bias
    if name in _SIGNED and sign:
        value = -value
    if name == "Solarize":
        return 256 - value
    if name == "TranslateX":
        return int(value * size[1])
    if name == "TranslateY":
        return int(value * size[0])
    return value


# ------------------------------------------------------------------ per-image reference
_NEAREST = InterpolationMode.NEAREST


def _shear(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """PIL's ``transform(AFFINE, (1, x, 0, y, 1, 0))`` as torchvision states it."""
    shear = [math.degrees(math.atan(x)), math.degrees(math.atan(y))]
    return TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=_NEAREST,
                     center=[0, 0])


def _translate(image: torch.Tensor, x: int, y: int) -> torch.Tensor:
    """PIL's ``transform(AFFINE, (1, 0, x, 0, 1, y))``: the content moves by ``(-x, -y)``."""
    return TF.affine(image, angle=0.0, translate=[-x, -y], scale=1.0, shear=[0.0, 0.0], interpolation=_NEAREST)


_REFERENCE: dict[str, Callable] = {
    "AutoContrast": lambda im, a: TF.autocontrast(im),
    "Brightness": lambda im, a: TF.adjust_brightness(im, a),
    "Color": lambda im, a: TF.adjust_saturation(im, a),
    "Contrast": lambda im, a: TF.adjust_contrast(im, a),
    "Equalize": lambda im, a: TF.equalize(im),
    "Identity": lambda im, a: im.clone(),
    "Posterize": lambda im, a: TF.posterize(im, a),
    "Rotate": lambda im, a: TF.rotate(im, float(a), interpolation=_NEAREST),
    "Sharpness": lambda im, a: TF.adjust_sharpness(im, a),
    "ShearX": lambda im, a: _shear(im, a, 0.0),
    "ShearY": lambda im, a: _shear(im, 0.0, a),
    "Solarize": lambda im, a: TF.solarize(im, a) if a <= 255 else im.clone(),  # PIL: level 0 inverts nothing
    "TranslateX": lambda im, a: _translate(im, a, 0),
    "TranslateY": lambda im, a: _translate(im, 0, a),
}


def reference_op(image: torch.Tensor, name: str, level: int, sign: int) -> torch.Tensor:
    """One op on one image, torchvision with Python scalars: ``[C, H, W]`` uint8 -> new uint8."""
    return _REFERENCE[name](image, op_argument(name, int(level), int(sign), tuple(image.shape[-2:])))


# ------------------------------------------------------------------ batched ops
# Each takes ``images [n, 3, H, W] uint8, level [n] int64, sign [n] int64`` (on the images'
# device) and returns a new ``[n, 3, H, W]`` uint8 batch.


@functools.cache
def _argument_table(name: str, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """``[(PARAMETER_MAX + 1) * 2]`` float64: :func:`op_argument` at ``level * 2 + sign``."""
    values = [op_argument(name, level, sign, size) for level in range(PARAMETER_MAX + 1) for sign in (0, 1)]
    return torch.tensor(values, dtype=torch.float64, device=device)


def _arguments(name: str, images: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """``[n, 1, 1, 1]`` float64: each image's argument."""
    table = _argument_table(name, tuple(images.shape[-2:]), images.device)
    return table.index_select(0, level * 2 + sign).view(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend``: ``images * f + other * (1 - f)`` in float32, the second
    product fused into the add (``add_(other, alpha=1 - f)``), clamped, truncated to uint8.
    factor: ``[n, 1, 1, 1]`` float64 (``1 - f`` is taken in float64, then rounded, as there)."""
    out = torch.addcmul(images.mul(factor.float()), other, (1.0 - factor).float())
    return out.clamp_(0, 255).to(torch.uint8)


def _luma(images: torch.Tensor) -> torch.Tensor:
    """``[n, 1, H, W]`` float32 floored luma, torchvision's ``rgb_to_grayscale`` arithmetic."""
    r, g, b = images.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(1)


def autocontrast(images, level, sign):
    """Per image and channel, ``(x - min) * 255 / (max - min)`` (unchanged where max == min)."""
    x = images.float()
    lo, hi = x.amin((-2, -1), keepdim=True), x.amax((-2, -1), keepdim=True)
    flat = hi == lo
    scale = (hi - lo).mul_(1.0 / 255).masked_fill_(flat, 1.0)
    return x.sub_(lo.masked_fill_(flat, 0.0)).div_(scale).clamp_(0, 255).to(torch.uint8)


def brightness(images, level, sign):
    """``x * f``, clamped and truncated (PIL's blend with black)."""
    return images.mul(_arguments("Brightness", images, level, sign).float()).clamp_(0, 255).to(torch.uint8)


def color(images, level, sign):
    """Blend with the floored luma (torchvision's ``adjust_saturation``)."""
    return _blend(images, _luma(images), _arguments("Color", images, level, sign))


def contrast(images, level, sign):
    """Blend with the mean luma. torchvision's ``add_(mean, alpha=1 - f)`` broadcasts one
    value per image, and its CPU loop rounds the scalar tail of each image (its last
    ``3HW mod 16`` pixels with AVX2) in two steps, not fused; where such a tail can exist,
    the same call is made once per level present, which rounds as it does."""
    mean = _luma(images).mean(dim=(-3, -2, -1), keepdim=True)
    factor = _arguments("Contrast", images, level, sign)
    # No tail up to 512-bit vectors; CUDA's kernel fuses every pixel (not checked on a GPU here).
    if images[0].numel() % 64 == 0 or images.is_cuda:
        return _blend(images, mean, factor)
    out = images.mul(factor.float())
    for value in level.unique().tolist():
        at = (level == value).nonzero().squeeze(1)
        alpha = 1.0 - op_argument("Contrast", value, 0, tuple(images.shape[-2:]))
        out.index_copy_(0, at, out.index_select(0, at).add_(mean.index_select(0, at), alpha=alpha))
    return out.clamp_(0, 255).to(torch.uint8)


def equalize(images, level, sign):
    """PIL's equalize per image and channel: one ``bincount`` of plane-offset values gives
    the ``[n * 3, 256]`` histograms; ``lut[k] = (cum[k - 1] + step // 2) // step`` with
    ``step = (pixels - count of the plane's maximum) // 255``; a plane with step 0 is kept."""
    n, c, h, w = images.shape
    planes = n * c
    flat = images.reshape(planes, h * w).long()
    offset = flat + 256 * torch.arange(planes, device=images.device)[:, None]
    hist = torch.bincount(offset.view(-1), minlength=planes * 256).view(planes, 256)
    top = hist.gather(1, flat.amax(1, keepdim=True))
    step = (h * w - top).div_(255, rounding_mode="floor")  # [planes, 1]
    cum = hist.cumsum(1)[:, :-1]
    lut = (cum + step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([torch.zeros_like(step), lut], 1)
    lut = torch.where(step == 0, torch.arange(256, device=images.device), lut).to(torch.uint8)
    return lut.view(-1).index_select(0, offset.view(-1)).view(n, c, h, w)


def posterize(images, level, sign):
    """Keep the top ``bits`` bits of each value."""
    bits = _arguments("Posterize", images, level, sign)
    return images & (256 - 2.0 ** (8 - bits)).to(torch.uint8)


def solarize(images, level, sign):
    """``255 - x`` where ``x >= threshold``."""
    threshold = _arguments("Solarize", images, level, sign).to(torch.int16)  # 0 .. 256
    return images ^ (images >= threshold).to(torch.uint8).mul_(255)  # x ^ 255 == 255 - x


def sharpness(images, level, sign):
    """torchvision's sharpness: blend with the 3x3 smoothing (1s around, 5 in the middle,
    / 13, rounded) by ``f``; border pixels kept. The smoothing sums integers exactly, and
    ``sum / 13`` is never within float error of a half, so its rounding is torchvision's."""
    h, w = images.shape[-2:]
    if h <= 2 or w <= 2:
        return images.clone()
    x = images.float()
    rows = x[..., :-2] + x[..., 1:-1] + x[..., 2:]  # [n, 3, H, W - 2]
    centre = x[..., 1:-1, 1:-1]
    smooth = (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]).add_(centre, alpha=4).div_(13).round_()
    alpha = (1.0 - _arguments("Sharpness", images, level, sign)).float()
    out = images.clone()
    out[..., 1:-1, 1:-1] = torch.addcmul(centre, smooth.sub_(centre), alpha).clamp_(0, 255)  # fused, as add_(alpha=)
    return out


@functools.cache
def _warp_maps(name: str, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """``[(PARAMETER_MAX + 1) * 2, H * W]`` int64: for ``level * 2 + sign``, the flat source
    pixel of each output pixel plus one, 0 where the warp reads outside (the fill). Computed
    by torchvision's grid and nearest sampling itself, on an image of pixel numbers."""
    h, w = size
    numbers = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w)
    maps = [reference_op(numbers, name, level, sign).view(-1)
            for level in range(PARAMETER_MAX + 1) for sign in (0, 1)]
    return torch.stack(maps).long().to(device)


def _warp(name: str):
    def warp(images, level, sign):
        n, c, h, w = images.shape
        index = _warp_maps(name, (h, w), images.device).index_select(0, level * 2 + sign)
        src = torch.nn.functional.pad(images.reshape(n, c, h * w), (1, 0))  # column 0: black fill
        return src.gather(2, index[:, None, :].expand(n, c, h * w)).view(n, c, h, w)

    warp.__name__ = warp.__qualname__ = name.lower()
    warp.__doc__ = f"{name} through :func:`_warp_maps`: a gather with per-sample maps, fill 0."
    return warp


# name -> batched op, or None for Identity (nothing to do).
STRONG_OPS: dict[str, Callable | None] = {
    "AutoContrast": autocontrast,
    "Brightness": brightness,
    "Color": color,
    "Contrast": contrast,
    "Equalize": equalize,
    "Identity": None,
    "Posterize": posterize,
    "Rotate": _warp("Rotate"),
    "Sharpness": sharpness,
    "ShearX": _warp("ShearX"),
    "ShearY": _warp("ShearY"),
    "Solarize": solarize,
    "TranslateX": _warp("TranslateX"),
    "TranslateY": _warp("TranslateY"),
}


def apply_strong_op(name: str, images: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Op ``name`` on every image of ``[n, 3, H, W]`` uint8 at its own ``level`` and ``sign``
    (``[n]`` int): a new uint8 batch, equal to :func:`reference_op` image by image."""
    fn = STRONG_OPS[name]
    if fn is None:
        return images.clone()
    dev = images.device
    return fn(images, level.to(dev, torch.int64), sign.to(dev, torch.int64))
