"""Batched augmentation on the device: random crop with padding, whole-image flip,
normalization. Each op works on a whole ``[B, 3, H, W]`` batch with a fixed number of
tensor ops, so on CUDA a batch costs a handful of kernel launches. The crop and the flip
are one op, :func:`crop_flip` (one gather); ``crop_with_padding`` and ``flip_images`` are
its two halves, kept as the references other backends are tested against.

``augment_batch`` is the one place that fixes the order of the training transforms
(crop, flip, localizable transform, normalize; SPEC section 1) for in-memory backends.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from pipelines.localizable import (
    PARAM_KEYS,
    apply_localizable,
    apply_localizable_,
    draw_localizable,
)


def draw_crop_flip(batch_size: int, *, padding: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-sample crop offsets ``crop_y``, ``crop_x`` in ``[0, 2 * padding]`` and whole-image
    ``hflip`` in {0, 1}: ``[B]`` int64 on the generator's device."""
    dev = generator.device
    return {
        "crop_y": torch.randint(2 * padding + 1, (batch_size,), generator=generator, device=dev),
        "crop_x": torch.randint(2 * padding + 1, (batch_size,), generator=generator, device=dev),
        "hflip": torch.randint(2, (batch_size,), generator=generator, device=dev),
    }


_CROP_COLUMNS: dict[tuple, torch.Tensor] = {}


def _crop_columns(w: int, device: torch.device) -> torch.Tensor:
    """``[2, W]`` int64: the column each output pixel reads, as is (row 0) and mirrored (row 1)."""
    key = (w, str(device))
    if key not in _CROP_COLUMNS:
        cols = torch.arange(w, dtype=torch.int64)
        _CROP_COLUMNS[key] = torch.stack([cols, cols.flip(0)]).to(device)
    return _CROP_COLUMNS[key]


def crop_flip(
    images: torch.Tensor, crop_y: torch.Tensor, crop_x: torch.Tensor, hflip: torch.Tensor, padding: int
) -> torch.Tensor:
    """Random crop with zero padding, then the whole-image flip, as one ``gather``.

    images: ``[B, C, H, W]`` any dtype; crop_y, crop_x: ``[B]`` int in ``[0, 2 * padding]``;
    hflip: ``[B]`` int in {0, 1}. Returns a new ``[B, C, H, W]`` tensor of the same dtype:
    ``flip_images(crop_with_padding(images, crop_y, crop_x, padding), hflip)``, i.e.
    torchvision's ``RandomCrop(H, padding)`` at those offsets, then ``hflip`` where 1.

    Output pixel ``(y, x)`` is padded pixel ``(crop_y + y, crop_x + x')`` with
    ``x' = W - 1 - x`` when flipped, i.e. flat position ``y * Wp + start[b, x]`` of its
    padded plane (``Wp = W + 2p``, ``start = crop_y * Wp + crop_x + x'``). Seen through a
    strided view whose row ``y`` starts at ``y * Wp``, that is one gather along the last
    dim with a ``[B, W]`` index shared by every channel and row: no ``[B, H, W]`` index to
    build, no permute copy. Ops: a pad, four on ``[B]`` / ``[B, W]``, one gather.
    """
    b, c, h, w = images.shape
    dev = images.device
    wp = w + 2 * padding
    plane = (h + 2 * padding) * wp
    columns = _crop_columns(w, dev).index_select(0, hflip.to(device=dev, dtype=torch.int64))  # [B, W]
    start = (crop_y.to(dev) * wp + crop_x.to(dev))[:, None] + columns
    # as_strided below reads the standard (NCHW) layout: F.pad keeps a channels-last input channels-last.
    padded = (F.pad(images, (padding,) * 4) if padding else images).contiguous()
    # rows[b, ch, y, i] = padded plane (b, ch) at flat position y * Wp + i; the windows overlap.
    rows = padded.as_strided((b, c, h, plane - (h - 1) * wp), (c * plane, plane, wp, 1))
    return rows.gather(3, start[:, None, None, :].expand(b, c, h, w))


def crop_with_padding(images: torch.Tensor, crop_y: torch.Tensor, crop_x: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pads by ``padding`` and takes an ``H x W`` window at ``(crop_y, crop_x)`` per sample.

    images: ``[B, C, H, W]`` any dtype; crop_y, crop_x: ``[B]`` int64 in ``[0, 2 * padding]``.
    Same pixels as torchvision's ``RandomCrop(H, padding)`` at those offsets.
    """
    if padding == 0:
        return images
    return crop_flip(images, crop_y, crop_x, torch.zeros_like(crop_y), padding)


def flip_images(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirrors left-right the images whose ``flip`` ([B] int) is 1: ``[B, C, H, W]`` any dtype,
    a new tensor (:func:`crop_flip` with no padding)."""
    zeros = torch.zeros_like(flip)
    return crop_flip(images, zeros, zeros, flip, 0)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``[B, 3, H, W]`` uint8 (0..255) -> float32 ``(x / 255 - mean) / std``."""
    dev = images.device
    scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32, device=dev))
    shift = torch.tensor(mean, dtype=torch.float32, device=dev) * 255.0
    return (images.float() - shift[:, None, None]) * scale[:, None, None]


def augment_batch(
    images: torch.Tensor,
    *,
    tasks: Sequence[str],
    generator: torch.Generator,
    augment: bool = True,
    normalize_to: tuple[Sequence[float], Sequence[float]] | None = None,
    padding: int = 4,
    hflip: bool = True,
    flip_axis: str = "horizontal",
) -> dict[str, torch.Tensor]:
    """The training transforms of one batch, in SPEC order.

    images: ``[B, 3, H, W]`` uint8 on the training device. Random numbers come from the
    CPU ``generator`` so results do not depend on the device. Returns ``images``
    (float32 normalized when ``normalize_to = (mean, std)``, else uint8) and the
    ``[B]`` int64 parameters ``quadrant``, ``flip``, ``rotation``, ``perm`` plus
    ``target_<task>`` of the enabled tasks; all zeros and no transform when
    ``tasks`` is empty (evaluation). ``hflip=False`` keeps the random crop but drops the
    whole-image flip (the draws stay the same, so only the flip changes).
    """
    b = images.shape[0]
    dev = images.device
    if augment:
        aug = draw_crop_flip(b, padding=padding, generator=generator)
        flip = aug["hflip"] if hflip else torch.zeros_like(aug["hflip"])
        images = crop_flip(images, aug["crop_y"], aug["crop_x"], flip, padding)
    if tasks:
        params = draw_localizable(b, tasks=tasks, generator=generator, device=dev)
        # After the crop the batch is ours (a fresh tensor): transform it in place.
        transform = apply_localizable_ if augment else apply_localizable
        images = transform(images, **{k: params[k] for k in PARAM_KEYS}, flip_axis=flip_axis)
    else:
        params = {k: torch.zeros(b, dtype=torch.int64, device=dev) for k in PARAM_KEYS}
    if normalize_to is not None:
        images = normalize(images, *normalize_to)
    return {"images": images, **params}
