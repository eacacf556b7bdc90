"""SimCLR's view ops against torchvision image by image, and the crop draw against
torchvision's rule."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2.functional._geometry import (
    _do_native_uint8_resize_on_cpu,
)

from pipelines.randaugment_ops import _luma
from pipelines.simclr_ops import (
    JITTER_OPS,
    JITTER_ORDERS,
    RESOLUTION,
    ColorJitter,
    RandomResizedCrop,
    _contrast,
    reference_color_jitter,
    reference_resized_crop,
    resized_crop,
    simclr_view,
)
from pipelines.views import CropFlip, Grayscale, apply_ops

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


def colour_grid(copies: int) -> torch.Tensor:
    """``[copies, 3, 64, 64]`` uint8: each image holds all 16**3 colours of levels 0, 17, .., 255."""
    levels = torch.arange(16) * 17
    rgb = torch.cartesian_prod(levels, levels, levels).T.reshape(3, 64, 64)
    return rgb.to(torch.uint8).expand(copies, -1, -1, -1).clone()


# ------------------------------------------------------------------ random resized crop
@native_resize
@pytest.mark.parametrize(("side", "size"), [(32, 32), (32, 24), (32, 40), (17, 17), (17, 24), (17, 8), ((24, 20), 16),
                                          (32, 5)])
def test_resized_crop_equals_torchvision_per_image(side, size):
    """Every box length from 1 pixel to the whole side, up- and downscaled (32 -> 5 needs
    float64: weights of precision 17)."""
    h, w = (side, side) if isinstance(side, int) else side
    x = sample_images(96, (h, w), seed=h * w)
    g = torch.Generator().manual_seed(size)
    height, width = torch.arange(96) % h + 1, torch.randint(1, w + 1, (96,), generator=g)
    width[:w] = torch.arange(1, w + 1)
    top = (torch.rand(96, generator=g) * (h - height + 1)).long()
    left = (torch.rand(96, generator=g) * (w - width + 1)).long()
    params = {"rrc_top": top, "rrc_left": left, "rrc_height": height, "rrc_width": width}
    out = resized_crop(x, top, left, height, width, (size, size))
    assert out.dtype == torch.uint8 and out.shape == (96, 3, size, size)
    assert torch.equal(out, reference_resized_crop(x, params, (size, size)))


def torchvision_rule(op: RandomResizedCrop, area, aspect, top, left) -> list[tuple[int, int, int, int]]:
    """torchvision's ``RandomResizedCrop.make_params``, line for line, on the numbers of
    ``op.attempts`` (its ``randint(0, n)`` as ``floor(u * n)``): ``[(top, left, h, w)]``."""
    height, width = op.input_size
    boxes = []
    for b in range(area.shape[1]):
        for attempt in range(10):
            target_area = height * width * area[attempt, b].item()
            aspect_ratio = aspect[attempt, b].item()
            w = round(math.sqrt(target_area * aspect_ratio))
            h = round(math.sqrt(target_area / aspect_ratio))
            if 0 < w <= width and 0 < h <= height:
                i = math.floor(top[b].item() * (height - h + 1))
                j = math.floor(left[b].item() * (width - w + 1))
                break
        else:
            in_ratio = float(width) / float(height)
            if in_ratio < min(op.ratio):
                w = width
                h = round(w / min(op.ratio))
            elif in_ratio > max(op.ratio):
                h = height
                w = round(h * max(op.ratio))
            else:
                w = width
                h = height
            i = (height - h) // 2
            j = (width - w) // 2
        boxes.append((i, j, h, w))
    return boxes


@pytest.mark.parametrize(("scale", "ratio", "input_size"), [
    ((0.08, 1.0), (3 / 4, 4 / 3), 32),
    ((0.5, 1.4), (3 / 4, 4 / 3), 17),  # about half the draws fall back
    ((0.2, 1.0), (0.3, 3.0), (24, 20)),
])
def test_the_draw_is_torchvisions_rule_vectorized(scale, ratio, input_size):
    op = RandomResizedCrop(scale=scale, ratio=ratio, input_size=input_size)
    attempts = op.attempts(2000, torch.Generator().manual_seed(1))
    drawn = op.draw(2000, torch.Generator().manual_seed(1))
    assert tuple(drawn) == op.keys and all(v.dtype == torch.int64 and v.shape == (2000,) for v in drawn.values())
    boxes = list(zip(*(drawn[k].tolist() for k in op.keys)))
    assert boxes == torchvision_rule(op, *attempts)
    assert torch.equal(op.boxes(*attempts)["rrc_top"], drawn["rrc_top"])


def test_drawn_boxes_are_inside_and_follow_scale_and_ratio():
    op = RandomResizedCrop(input_size=32)
    d = op.draw(4000, torch.Generator().manual_seed(2))
    top, left, h, w = (d[k].double() for k in op.keys)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    # Rounding each side to a pixel moves the area by under (h + w) / 2 + 1/4 and the ratio likewise.
    area = h * w
    assert (area >= 0.08 * 1024 - (h + w) / 2 - 0.25).all() and (area <= 1024).all()
    assert ((w + 0.5) / (h - 0.5) >= 3 / 4).all() and ((w - 0.5) / (h + 0.5) <= 4 / 3).all()
    with torch.random.fork_rng():  # torchvision's own draws, from the global generator
        torch.manual_seed(0)
        theirs = [T.RandomResizedCrop(32).make_params([torch.zeros(3, 32, 32)]) for _ in range(4000)]
    their_h, their_w = (torch.tensor([p[k] for p in theirs], dtype=torch.float64) for k in ("height", "width"))
    for ours, their in ((area / 1024, their_h * their_w / 1024), ((w / h).log(), (their_w / their_h).log())):
        assert float(ours.mean()) == pytest.approx(float(their.mean()), abs=0.02)
        assert float(ours.std()) == pytest.approx(float(their.std()), abs=0.02)
    assert len({(int(a), int(b)) for a, b in zip(top, left)}) > 400  # positions spread over the image
    assert torch.equal(d["rrc_top"], op.draw(4000, torch.Generator().manual_seed(2))["rrc_top"])
    assert not torch.equal(d["rrc_top"], op.draw(4000, torch.Generator().manual_seed(3))["rrc_top"])


@pytest.mark.parametrize(("input_size", "ratio"), [((32, 32), (3 / 4, 4 / 3)), ((16, 32), (3 / 4, 4 / 3)),
                                                   ((32, 16), (3 / 4, 4 / 3)), ((32, 32), (2.0, 3.0))])
def test_the_fallback_is_torchvisions_central_crop(input_size, ratio):
    """A scale beyond the image makes every attempt miss: torchvision's fallback, which it
    draws deterministically, for every image."""
    op = RandomResizedCrop(scale=(2.0, 3.0), ratio=ratio, input_size=input_size)
    d = op.draw(50, torch.Generator().manual_seed(0))
    want = T.RandomResizedCrop(8, scale=(2.0, 3.0), ratio=ratio).make_params([torch.zeros(3, *input_size)])
    for key, name in zip(op.keys, ("top", "left", "height", "width")):
        assert set(d[key].tolist()) == {want[name]}


@native_resize
@pytest.mark.parametrize(("input_size", "size"), [(32, None), (32, 24), (17, None), (17, 28)])
def test_random_resized_crop_equals_torchvision_per_image(input_size, size):
    x = sample_images(64, input_size, seed=input_size)
    op = RandomResizedCrop(size=size, input_size=input_size)
    params = op.draw(64, torch.Generator().manual_seed(5))
    out = op.apply(x, params)
    assert out.shape == (64, 3, *op.output_size)
    assert torch.equal(out, reference_resized_crop(x, params, op.output_size))


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
    for bad in ({"scale": (0.5, 0.1)}, {"scale": (0.0, 1.0)}, {"ratio": (2.0, 1.0)}, {"size": 0},
                {"input_size": 0}, {"input_size": (32, 32, 3)}):
        with pytest.raises(ValueError):
            RandomResizedCrop(**bad)
    for bad in ({"strength": -0.1}, {"strength": 2.6}, {"p": 1.5}):
        with pytest.raises(ValueError):
            ColorJitter(**bad)
    with pytest.raises(ValueError, match="blur"):
        simclr_view(blur=True)
    op = RandomResizedCrop(input_size=32)
    with pytest.raises(ValueError, match="input_size"):
        op.apply(sample_images(4, 24), op.draw(4, torch.Generator()))
    assert RandomResizedCrop(size=24, input_size=(32, 20)).output_size == (24, 24)
    assert RandomResizedCrop(input_size=(32, 20)).output_size == (32, 20)
    assert JITTER_OPS == ("brightness", "contrast", "saturation", "hue") and len(set(JITTER_ORDERS)) == 24
