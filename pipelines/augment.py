"""Batched augmentation on the device: random crop with padding, whole-image flip,
normalization. Each op works on a whole ``[B, 3, H, W]`` batch with a fixed number of
tensor ops, so on CUDA a batch costs a handful of kernel launches. The crop and the flip
are one op, :func:`crop_flip` (one copy per channel of each image); ``crop_with_padding``
and ``flip_images`` are its two halves, kept as the references other backends are tested
against.

The ops of a loader's views and their order (crop and flip, the localizable transform;
docs/method.md section 1) are ``pipelines.views``; normalization follows the last op.
"""

from __future__ import annotations

from typing import Sequence

import torch


def draw_crop_flip(batch_size: int, *, padding: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-sample crop offsets ``crop_y``, ``crop_x`` in ``[0, 2 * padding]`` and whole-image
    ``hflip`` in {0, 1}: ``[B]`` int64 on the generator's device."""
    dev = generator.device
    return {
        "crop_y": torch.randint(2 * padding + 1, (batch_size,), generator=generator, device=dev),
        "crop_x": torch.randint(2 * padding + 1, (batch_size,), generator=generator, device=dev),
        "hflip": torch.randint(2, (batch_size,), generator=generator, device=dev),
    }


# How a crop fills the border: torchvision RandomCrop's padding_mode names.
PADDING_MODES = ("zeros", "reflect")


def pad_and_mirror(images: torch.Tensor, padding: int, *, mirrored: bool, mode: str = "zeros") -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[1 or 2, N, C, H + 2p, W + 2p]`` of the same dtype: the images
    padded by ``padding`` (``mode``: zeros, or ``reflect`` as torchvision's
    ``padding_mode="reflect"``, needing ``padding < min(H, W)``), then, when ``mirrored``,
    their mirror images; the layout :func:`read_windows` reads crops and flips from."""
    n, c, h, w = images.shape
    if mode not in PADDING_MODES:
        raise ValueError(f"unknown padding mode {mode!r}; valid: {', '.join(PADDING_MODES)}")
    staged = images.new_zeros((1 + mirrored, n, c, h + 2 * padding, w + 2 * padding))
    if mode == "reflect" and padding:
        if padding >= min(h, w):
            raise ValueError(f"reflect padding of {padding} px needs images larger than {padding} px, got {h}x{w}")
        staged[0] = torch.nn.functional.pad(images, (padding,) * 4, mode="reflect")
    else:
        staged[0, :, :, padding : padding + h, padding : padding + w] = images
    if mirrored:
        staged[1] = staged[0].flip(-1)
    return staged


_PLANE_OFFSETS: dict[tuple, torch.Tensor] = {}


def read_windows(staged: torch.Tensor, src: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                 flip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, C, h, w]``: the ``h x w`` window at ``(top, left)`` of the padded image
    ``src[i]`` of ``staged`` (:func:`pad_and_mirror`), mirrored where ``flip`` is 1; a
    fresh batch whose rows are contiguous, not the batch itself: strides
    ``(C * L, L, Wp, 1)`` with ``L = (h - 1) * Wp + w``.

    A crop is a shift and a flip a mirror (a mirrored window starts at column
    ``Wp - w - left`` of the mirror image), so the ``h`` rows of one channel of one
    window are ``Wp`` apart in one run of ``L`` consecutive elements of ``staged``: one
    ``index_select`` of the ``B x C`` run starts, through an overlapping ``[*, L]`` view,
    copies every window as ``B x C`` whole runs (a contiguous copy each, where rows
    would cost a copy call per row), and the windows are a strided view of the runs.
    """
    _, n, c, hp, wp = staged.shape
    h, w = size
    dev = staged.device
    src, top, left, flip = (t.to(device=dev, dtype=torch.int64) for t in (src, top, left, flip))
    key = (c, hp * wp, str(dev))
    if key not in _PLANE_OFFSETS:  # [C]: where channel ch starts in one staged image
        _PLANE_OFFSETS[key] = (torch.arange(c) * (hp * wp)).to(dev)
    run = (h - 1) * wp + w
    image = c * hp * wp
    # [B]: src * image + top * wp + left, and where flipped, the mirror image's window at
    # column wp - w - left, n * image + (wp - w - 2 * left) further; in place, as each
    # small op costs a batch far more than its arithmetic
    base = left.mul(-2).add_(n * image + wp - w).mul_(flip)
    base.add_(src, alpha=image).add_(top, alpha=wp).add_(left)
    flat = staged.reshape(-1)
    runs = flat.as_strided((flat.numel() - run + 1, run), (1, 1))  # runs[i] = flat[i : i + run]
    out = runs.index_select(0, (base[:, None] + _PLANE_OFFSETS[key]).view(-1))
    return out.as_strided((len(src), c, h, w), (c * run, run, wp, 1))


def crop_flip(
    images: torch.Tensor, crop_y: torch.Tensor, crop_x: torch.Tensor, hflip: torch.Tensor, padding: int,
    mode: str = "zeros",
) -> torch.Tensor:
    """Random crop with zero (or ``mode="reflect"``) padding, then the whole-image flip, as whole-run copies.

    images: ``[B, C, H, W]`` any dtype; crop_y, crop_x: ``[B]`` int in ``[0, 2 * padding]``;
    hflip: ``[B]`` int in {0, 1}. Returns a new ``[B, C, H, W]`` tensor of the same dtype:
    ``flip_images(crop_with_padding(images, crop_y, crop_x, padding), hflip)``, i.e.
    torchvision's ``RandomCrop(H, padding)`` at those offsets, then ``hflip`` where 1.
    The batch is padded and mirrored into one buffer, then :func:`read_windows`, made
    contiguous.
    """
    b, _, h, w = images.shape
    staged = pad_and_mirror(images, padding, mirrored=True, mode=mode)
    return read_windows(staged, torch.arange(b), crop_y, crop_x, hflip, (h, w)).contiguous()


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


_NORMALIZE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``[B, 3, H, W]`` uint8 (0..255), any strides -> contiguous float32 ``(x / 255 - mean) / std``."""
    key = (tuple(mean), tuple(std), str(images.device))
    if key not in _NORMALIZE:  # [3, 1, 1] float32 each: x - 255 mean, then * 1 / (255 std)
        scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))
        shift = torch.tensor(mean, dtype=torch.float32) * 255.0
        _NORMALIZE[key] = shift[:, None, None].to(images.device), scale[:, None, None].to(images.device)
    shift, scale = _NORMALIZE[key]
    # One float buffer, updated in place: each fresh batch-sized buffer costs its page faults.
    return images.to(torch.float32, memory_format=torch.contiguous_format, copy=True).sub_(shift).mul_(scale)
