"""SimCLR's colour jitter against torchvision image by image, and the view's chain."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from pipelines.randaugment_ops import _luma
from pipelines.resized_crop import RandomResizedCrop, reference_resized_crop
from pipelines.simclr_ops import (
    JITTER_OPS,
    JITTER_ORDERS,
    RESOLUTION,
    ColorJitter,
    _contrast,
    reference_color_jitter,
    simclr_view,
)
from pipelines.views import CropFlip, Grayscale, apply_ops
from tests.pipelines.samples import native_resize, sample_images


def colour_grid(copies: int) -> torch.Tensor:
    """``[copies, 3, 64, 64]`` uint8: each image holds all 16**3 colours of levels 0, 17, .., 255."""
    levels = torch.arange(16) * 17
    rgb = torch.cartesian_prod(levels, levels, levels).T.reshape(3, 64, 64)
    return rgb.to(torch.uint8).expand(copies, -1, -1, -1).clone()


# ------------------------------------------------------------------ colour jitter
@pytest.mark.parametrize("side", [32, 24, 17])
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_color_jitter_equals_torchvision_per_image(side, strength):
    x = sample_images(32, side, seed=side)
    op = ColorJitter(strength)
    params = op.draw(32, torch.Generator().manual_seed(side))
    before = x.clone()
    out = op.apply(x, params)
    assert torch.equal(x, before) and out.dtype == torch.uint8  # apply leaves its input alone
    assert 0 < params["cj_apply"].sum() < 32
    assert torch.equal(out, reference_color_jitter(x, params, strength))
    assert torch.equal(op.apply_(x.clone(), params), out)


def test_every_order_and_the_whole_hue_range_on_every_colour():
    """All 4096 colours of a 16-level grid, every order, hue shifts over [-0.5, 0.5)."""
    x = colour_grid(24)
    op = ColorJitter(strength=2.5, p=1.0)
    params = op.draw(24, torch.Generator().manual_seed(0))
    params["cj_order"] = torch.arange(24)
    params["cj_hue"][:3] = torch.tensor([0, RESOLUTION // 2, RESOLUTION - 1])  # -0.5, 0, just under 0.5
    assert torch.equal(op.apply(x, params), reference_color_jitter(x, params, 2.5))


def test_contrast_rounds_like_torchvision_where_its_cpu_loop_has_a_tail():
    """torchvision's ``add_(mean, alpha=1 - f)`` rounds a few pixels of a 2 x 2 image (its
    scalar tail) twice; a fused blend misses some of them."""
    x = sample_images(6000, 2, seed=4)
    factor = torch.rand(6000, generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 0.5
    ref = torch.stack([TF.adjust_contrast(x[i], factor[i].item()) for i in range(6000)])
    f = factor.view(-1, 1, 1, 1)
    fused = torch.addcmul(x.mul(f.float()), _luma(x).mean(dim=(-3, -2, -1), keepdim=True), (1.0 - f).float())
    assert not torch.equal(fused.clamp_(0, 255).to(torch.uint8), ref)
    assert torch.equal(_contrast(x, factor.view(-1, 1, 1, 1)), ref)


def test_color_jitter_draws_follow_the_seed_and_their_ranges():
    op = ColorJitter(strength=1.0, p=0.8)
    d = op.draw(4000, torch.Generator().manual_seed(0))
    assert tuple(d) == op.keys and all(v.dtype == torch.int64 and v.shape == (4000,) for v in d.values())
    assert 0.77 < d["cj_apply"].float().mean() < 0.83
    assert set(d["cj_order"].tolist()) == set(range(24))
    factors = op.factors(d)
    for (lo, hi), row in zip(((0.2, 1.8),) * 3 + ((-0.2, 0.2),), factors):
        assert lo <= row.min() < lo + 0.01 and hi - 0.01 < row.max() < hi
    again = op.draw(4000, torch.Generator().manual_seed(0))
    other = op.draw(4000, torch.Generator().manual_seed(1))
    assert all(torch.equal(d[k], again[k]) for k in op.keys)
    assert not any(torch.equal(d[k], other[k]) for k in op.keys)
    assert ColorJitter(strength=2.0).ranges[0] == (0.0, 2.6)  # brightness never below 0


def test_color_jitter_probability_and_strength_zero():
    x = sample_images(32, 16)
    never, always = ColorJitter(p=0.0), ColorJitter(p=1.0)
    off = never.draw(32, torch.Generator().manual_seed(0))
    assert not off["cj_apply"].any() and always.draw(32, torch.Generator())["cj_apply"].all()
    out = never.apply(x, off)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    on = always.draw(32, torch.Generator().manual_seed(0))
    changed = (always.apply(x, on) != x).flatten(1).any(1)
    assert changed[4:].all()  # every image with colour and range changes (0 .. 3 are flat or grey)
    assert torch.equal(ColorJitter(0.0, p=1.0).apply(x, on), x)  # torchvision's ColorJitter(0, 0, 0, 0)


# ------------------------------------------------------------------ the view
def reference_chain(x: torch.Tensor, params: dict, size: tuple[int, int], strength: float) -> torch.Tensor:
    """SimCLR's view image by image: torchvision's resized crop, flip, colour jitter, grayscale."""
    x = reference_resized_crop(x, params, size)
    x = torch.stack([TF.horizontal_flip(im) if f else im for im, f in zip(x, params["hflip"].tolist())])
    x = reference_color_jitter(x, params, strength)
    return torch.stack([TF.rgb_to_grayscale(im, num_output_channels=3) if gray else im
                        for im, gray in zip(x, params["grayscale"].tolist())])


@native_resize
@pytest.mark.parametrize(("input_size", "size", "strength"), [(32, None, 0.5), (32, 24, 1.0), (17, None, 0.5)])
def test_simclr_view_equals_the_chain_of_references(input_size, size, strength):
    view = simclr_view(size, strength, input_size=input_size)
    assert [type(op) for op in view] == [RandomResizedCrop, CropFlip, ColorJitter, Grayscale]
    assert view[1] == CropFlip(padding=0, hflip=True) and view[2].p == 0.8 and view[3] == Grayscale(0.2)
    x = sample_images(32, input_size, seed=7)
    out, params = apply_ops(x, view, torch.Generator().manual_seed(7))
    assert set(params) == {k for op in view for k in op.keys}
    assert params["hflip"].any() and params["grayscale"].any() and not params["crop_y"].any()
    assert torch.equal(out, reference_chain(x, params, view[0].output_size, strength))


@native_resize
def test_simclr_view_on_the_training_device(device):
    """Parameters drawn on the CPU, images on the device (CUDA where there is one)."""
    x = sample_images(32, 32, seed=8)
    out, params = apply_ops(x.to(device), simclr_view(), torch.Generator().manual_seed(8))
    assert out.device.type == device
    cpu = {k: v.cpu() for k, v in params.items()}
    assert torch.equal(out.cpu(), reference_chain(x, cpu, (32, 32), 0.5))


def test_bad_settings_are_rejected():
    for bad in ({"strength": -0.1}, {"strength": 2.6}, {"p": 1.5}):
        with pytest.raises(ValueError):
            ColorJitter(**bad)
    with pytest.raises(ValueError, match="blur"):
        simclr_view(blur=True)
    assert JITTER_OPS == ("brightness", "contrast", "saturation", "hue") and len(set(JITTER_ORDERS)) == 24
