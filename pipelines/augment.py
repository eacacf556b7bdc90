"""Batched augmentation on the device: random crop with padding, whole-image flip,
normalization. Each op works on a whole ``[B, 3, H, W]`` batch with a fixed number of
tensor ops, so on CUDA a batch costs a handful of kernel launches.

``augment_batch`` is the one place that fixes the order of the training transforms
(crop, flip, localizable transform, normalize; SPEC section 1) for in-memory backends.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from gssl_fast.pretext import PARAM_KEYS, apply_localizable, draw_localizable


def draw_crop_flip(batch_size: int, *, padding: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-sample crop offsets ``crop_y``, ``crop_x`` in ``[0, 2 * padding]`` and whole-image
    ``hflip`` in {0, 1}: ``[B]`` int64 on the generator's device."""
    dev = generator.device
    return {
        "crop_y": torch.randint(2 * padding + 1, (batch_size,), generator=generator, device=dev),
        "crop_x": torch.randint(2 * padding + 1, (batch_size,), generator=generator, device=dev),
        "hflip": torch.randint(2, (batch_size,), generator=generator, device=dev),
    }


def crop_with_padding(images: torch.Tensor, crop_y: torch.Tensor, crop_x: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pads by ``padding`` and takes an ``H x W`` window at ``(crop_y, crop_x)`` per sample.

    images: ``[B, C, H, W]`` any dtype; crop_y, crop_x: ``[B]`` int64 in ``[0, 2 * padding]``.
    Same pixels as torchvision's ``RandomCrop(H, padding)`` at those offsets.
    """
    if padding == 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dev = images.device
    rows = crop_y.to(dev)[:, None] + torch.arange(h, device=dev)  # [B, H]
    cols = crop_x.to(dev)[:, None] + torch.arange(w, device=dev)  # [B, W]
    batch = torch.arange(b, device=dev)[:, None, None]
    # Advanced indices on dims 0, 2, 3 put the channel dim last: [B, H, W, C].
    window = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return window.permute(0, 3, 1, 2).contiguous()


def flip_images(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirrors left-right the images whose ``flip`` ([B] int) is 1."""
    mask = flip.to(device=images.device, dtype=torch.bool)[:, None, None, None]
    return torch.where(mask, images.flip(-1), images)


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
        images = crop_with_padding(images, aug["crop_y"], aug["crop_x"], padding)
        if hflip:
            images = flip_images(images, aug["hflip"])
    if tasks:
        params = draw_localizable(b, tasks=tasks, generator=generator, device=dev)
        images = apply_localizable(images, **{k: params[k] for k in PARAM_KEYS}, flip_axis=flip_axis)
    else:
        params = {k: torch.zeros(b, dtype=torch.int64, device=dev) for k in PARAM_KEYS}
    if normalize_to is not None:
        images = normalize(images, *normalize_to)
    return {"images": images, **params}
