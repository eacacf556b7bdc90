"""The random resized crop against torchvision image by image, and its draw against
torchvision's rule."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2 as T

from pipelines.resized_crop import RandomResizedCrop, reference_resized_crop, resized_crop
from tests.pipelines.samples import native_resize, sample_images


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


def test_bad_settings_are_rejected():
    for bad in ({"scale": (0.5, 0.1)}, {"scale": (0.0, 1.0)}, {"ratio": (2.0, 1.0)}, {"size": 0},
                {"input_size": 0}, {"input_size": (32, 32, 3)}):
        with pytest.raises(ValueError):
            RandomResizedCrop(**bad)
    op = RandomResizedCrop(input_size=32)
    with pytest.raises(ValueError, match="input_size"):
        op.apply(sample_images(4, 24), op.draw(4, torch.Generator()))
    assert RandomResizedCrop(size=24, input_size=(32, 20)).output_size == (24, 24)
    assert RandomResizedCrop(input_size=(32, 20)).output_size == (32, 20)
