"""uint8 sample batches for the view-op tests, and the mark of the tests that need
torchvision's native uint8 resize (the semantics of ``pipelines.resized_crop``)."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2.functional._geometry import _do_native_uint8_resize_on_cpu

# torchvision resizes uint8 natively (our semantics) where the CPU has AVX2 / AVX512 or is arm64.
native_resize = pytest.mark.skipif(not _do_native_uint8_resize_on_cpu(InterpolationMode.BILINEAR),
                                   reason="torchvision resizes uint8 through float32 on this CPU")


def sample_images(b: int, side: int | tuple[int, int], seed: int = 0) -> torch.Tensor:
    """``[b, 3, H, W]`` uint8 noise, each image in its own value range; image 0 constant,
    image 1 two-valued, image 2 grey, image 3 with channels at 0 / 255."""
    h, w = (side, side) if isinstance(side, int) else side
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (b, 3, h, w), generator=g)
    low, span = torch.randint(0, 256, (2, b, 1, 1, 1), generator=g)
    span[0], span[1] = 0, 1
    x = (low + noise * span // 255).clamp(max=255).to(torch.uint8)
    x[2] = x[2, :1]
    x[3] = x[3] // 128 * 255
    return x
