"""G-SimCLR's notebooks' view: TF's colour ops batched (pipelines.tf_color) against their
per-image, per-pixel reference and against plain HSV; the view's ops and parameters; the
view on every loader backend."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from pipelines import make_loader
from pipelines.simclr_ops import authors_view, simclr_view
from pipelines.tf_color import RESOLUTION, TF_JITTER_OPS, TFColorJitter, _hue, _saturation, reference_tf_color_jitter
from pipelines.views import CropFlip, PerBatch, apply_ops
from tests.pipelines.loader_contract import arrays, collect, replay
from tests.pipelines.samples import sample_images
from tests.pipelines.test_simclr_ops import colour_grid


@pytest.mark.parametrize("side", [16, 17])
@pytest.mark.parametrize("strength", [0.2, 1.25])
def test_tf_color_jitter_equals_the_per_pixel_reference(side, strength):
    x = sample_images(24, side, seed=side)
    op = TFColorJitter(strength, p=0.7)
    params = op.draw(24, torch.Generator().manual_seed(side))
    before = x.clone()
    out = op.apply(x, params)
    assert torch.equal(x, before) and out.dtype == torch.uint8 and out.is_contiguous()
    assert 0 < params["tfj_apply"].sum() < 24
    assert torch.equal(out, reference_tf_color_jitter(x, params, strength))
    off = params["tfj_apply"] == 0
    assert torch.equal(out[off], x[off])


def test_every_colour_at_the_ends_of_every_range():
    """All 4096 colours of a 16-level grid; each factor at its lowest, middle and highest draw."""
    x = colour_grid(6)
    op = TFColorJitter(strength=1.25, p=1.0)
    ends = torch.tensor([0, RESOLUTION // 2, RESOLUTION - 1, 0, RESOLUTION - 1, RESOLUTION // 4])
    params = {"tfj_apply": torch.ones(6, dtype=torch.int64),
              **{f"tfj_{name}": ends.roll(i) for i, name in enumerate(TF_JITTER_OPS)}}
    assert torch.equal(op.apply(x, params), reference_tf_color_jitter(x, params, 1.25))


def test_the_factors_are_the_notebooks_ranges():
    """Strength 0.2: brightness +-0.16, contrast and saturation in [0.84, 1.16], hue +-0.04; p 0.5."""
    op = TFColorJitter()
    assert (op.strength, op.p) == (0.2, 0.5)
    flat = [v for pair in op.ranges for v in pair]
    assert flat == pytest.approx([-0.16, 0.16, 0.84, 1.16, 0.84, 1.16, -0.04, 0.04])
    d = op.draw(4000, torch.Generator().manual_seed(0))
    assert tuple(d) == op.keys and all(v.dtype == torch.int64 and v.shape == (4000,) for v in d.values())
    assert 0.47 < d["tfj_apply"].float().mean() < 0.53
    factors = op.factors(d)
    assert factors.dtype == torch.float32
    for (lo, hi), row in zip(op.ranges, factors):
        assert lo <= row.min() < lo + 0.001 and hi - 0.001 < row.max() < hi
    for bad in ({"strength": -0.1}, {"strength": 1.3}, {"p": 1.5}):
        with pytest.raises(ValueError):
            TFColorJitter(**bad)


def test_brightness_and_contrast_are_tf_s_formulas():
    """``x + delta``, then ``mean + f (x - mean)`` with each channel's own mean. (Pixels kept
    inside [0, 1] on the way, where saturation 1 and hue 0 change nothing.)"""
    x = sample_images(8, 8, seed=3) // 2 + 64
    op = TFColorJitter(0.2, p=1.0)
    params = op.draw(8, torch.Generator().manual_seed(3))
    params["tfj_saturation"][:] = RESOLUTION // 2  # factor 1
    params["tfj_hue"][:] = RESOLUTION // 2  # delta 0
    bright, contrast = op.factors(params)[:2].double()
    y = x.double() / 255 + bright.view(-1, 1, 1, 1)
    mean = y.mean(dim=(2, 3), keepdim=True)
    y = mean + contrast.view(-1, 1, 1, 1) * (y - mean)
    assert 0 < y.min() and y.max() < 1
    assert (op.apply(x, params).double() - y * 255).abs().max() <= 0.5 + 1e-3


def test_saturation_and_hue_are_hsv_as_colorsys_has_them():
    """On pixels in [0, 1]: saturation scales HSV's S (clipped to 1), hue turns HSV's H."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 3, 6, 6, generator=g)
    scale = torch.tensor([0.0, 0.5, 1.3, 3.0])
    delta = torch.tensor([-0.5, -0.04, 0.04, 0.3])
    sat, hue = _saturation(x, scale), _hue(x, delta)
    for i in range(4):
        px = x[i].permute(1, 2, 0).reshape(-1, 3).tolist()
        hsv = [colorsys.rgb_to_hsv(*p) for p in px]
        want_sat = [colorsys.hsv_to_rgb(h, min(1.0, s * scale[i].item()), v) for h, s, v in hsv]
        want_hue = [colorsys.hsv_to_rgb((h + delta[i].item()) % 1.0, s, v) for h, s, v in hsv]
        np.testing.assert_allclose(sat[i].permute(1, 2, 0).reshape(-1, 3).numpy(), want_sat, atol=2e-6)
        np.testing.assert_allclose(hue[i].permute(1, 2, 0).reshape(-1, 3).numpy(), want_hue, atol=2e-6)


def reference_authors_chain(x: torch.Tensor, params: dict, strength: float = 0.2) -> torch.Tensor:
    """The notebooks' CustomAugment image by image: flip, then the TF colour jitter."""
    x = torch.stack([TF.horizontal_flip(im) if f else im for im, f in zip(x, params["hflip"].tolist())])
    return reference_tf_color_jitter(x, params, strength)


def test_authors_view_is_a_flip_and_the_tf_jitter_without_crop_or_grayscale():
    view = authors_view()
    assert view == (CropFlip(padding=0, hflip=True), TFColorJitter(0.2, 0.5))
    x = sample_images(16, 12, seed=7)
    out, params = apply_ops(x, view, torch.Generator().manual_seed(7))
    assert set(params) == {"crop_y", "crop_x", "hflip", *TFColorJitter.keys} and "grayscale" not in params
    assert not params["crop_y"].any() and not params["crop_x"].any()
    assert 0 < params["hflip"].sum() < 16 and 0 < params["tfj_apply"].sum() < 16
    assert torch.equal(out, reference_authors_chain(x, params))


def test_per_batch_draws_give_every_image_the_same_parameters():
    """The notebooks' Keras layer runs on the batch tensor: one coin and one factor each per batch."""
    view = authors_view(per_batch=True)
    assert all(isinstance(op, PerBatch) for op in view) and tuple(op.op for op in view) == authors_view()
    x = sample_images(16, 12, seed=9)
    seen = set()
    for seed in range(16):
        out, params = apply_ops(x, view, torch.Generator().manual_seed(seed))
        assert all(v.shape == (16,) and (v == v[0]).all() for v in params.values())
        assert torch.equal(out, reference_authors_chain(x, params))
        seen.add((int(params["hflip"][0]), int(params["tfj_apply"][0])))
    assert seen == {(0, 0), (0, 1), (1, 0), (1, 1)}
    with pytest.raises(TypeError, match="PerBatch"):
        PerBatch("flip")


def test_authors_view_on_the_training_device(device):
    x = sample_images(16, 16, seed=8)
    out, params = apply_ops(x.to(device), authors_view(p=1.0), torch.Generator().manual_seed(8))
    assert out.device.type == device
    cpu = {k: v.cpu() for k, v in params.items()}
    assert torch.equal(out.cpu(), reference_authors_chain(x, cpu))


@pytest.mark.parametrize("name", ["authors", "authors_per_batch", "simclr"])
def test_simclr_views_replay_on_every_backend(backend, device, name):
    """DALI and FFCV run the flip (a zero-padded CropFlip) in their graphs or hand the batch
    to the torch ops; either way each view replays from the parameters it reports."""
    views = {"authors": authors_view(), "authors_per_batch": authors_view(per_batch=True),
             "simclr": simclr_view(input_size=16)}
    two = {"view1": views[name], "view2": views[name]}
    images, labels = arrays(64, 16)
    kw = {"num_workers": 1} if backend == "ffcv" else {}
    batches = collect(make_loader((images, labels), backend=backend, batch_size=32, views=two, normalize=False,
                                  seed=3, device=device, **kw))
    src = torch.from_numpy(images).permute(0, 3, 1, 2)
    for b in batches:
        for view_name, view in two.items():
            assert torch.equal(b[view_name], replay(view, src[b["indices"]], b, view_name)), view_name
    assert not torch.equal(batches[0]["view1"], batches[0]["view2"])
