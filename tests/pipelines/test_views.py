"""The ops of a view against plain per-sample references, and the view plumbing."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from pipelines.augment import draw_crop_flip
from pipelines.localizable import PARAM_KEYS, draw_localizable, reference_localizable
from pipelines.views import (
    CropFlip,
    Grayscale,
    Localizable,
    apply_ops,
    check_views,
    finish_view,
    native_prefix,
    standard_view,
)


def batch(b=7, side=16, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, side, side), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("hflip", [True, False])
def test_standard_view_equals_the_per_sample_chain(hflip):
    """crop -> flip -> localizable -> normalize, replayed per sample from the same draws."""
    x = batch()
    images, params = apply_ops(x, standard_view(padding=2, hflip=hflip, tasks=("rotation", "flip", "perm")),
                               torch.Generator().manual_seed(9))
    out = finish_view("images", images, params, normalize_to=((0.5,) * 3, (0.25,) * 3))
    g = torch.Generator().manual_seed(9)
    aug = draw_crop_flip(7, padding=2, generator=g)
    loc = draw_localizable(7, generator=g)
    for i in range(7):
        im = TF.crop(TF.pad(x[i], [2] * 4), int(aug["crop_y"][i]), int(aug["crop_x"][i]), 16, 16)
        im = TF.hflip(im) if hflip and aug["hflip"][i] else im
        im = reference_localizable(im[None], **{k: loc[k][i : i + 1] for k in PARAM_KEYS})[0]
        ref = TF.normalize(im.float() / 255, (0.5,) * 3, (0.25,) * 3)
        torch.testing.assert_close(out["images"][i], ref, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(out[k], loc[k]) for k in PARAM_KEYS)
    assert out["hflip"].any() == hflip


def test_grayscale_equals_torchvision_per_sample():
    x = batch(64, 8, seed=1)
    op = Grayscale(0.5)
    params = op.draw(64, torch.Generator().manual_seed(2))
    out = op.apply(x, params)
    assert 0 < params["grayscale"].sum() < 64
    for i in range(64):
        ref = TF.rgb_to_grayscale(x[i], num_output_channels=3) if params["grayscale"][i] else x[i]
        assert torch.equal(out[i], ref)


def test_an_empty_view_and_missing_localizable_params_are_identity():
    x = batch(4)
    images, params = apply_ops(x, (), torch.Generator())
    out = finish_view("plain", images, params)
    assert torch.equal(out["plain"], x) and all(out[f"plain/{k}"].eq(0).all() for k in PARAM_KEYS)
    assert not any("target_" in k for k in out)


def test_native_prefix_follows_the_backend_order():
    native = (CropFlip, Localizable)
    loc, crop, gray = Localizable(("rotation",)), CropFlip(4), Grayscale(0.2)
    assert native_prefix((crop, loc, gray), native) == 2
    assert native_prefix((loc,), native) == 1
    assert native_prefix((gray, crop), native) == 0
    assert native_prefix((loc, crop), native) == 1  # the graph crops before the transform
    assert native_prefix((crop, crop), native) == 1
    assert native_prefix((), native) == 0


def test_bad_ops_and_views():
    with pytest.raises(ValueError, match="padding"):
        CropFlip(-1)
    with pytest.raises(ValueError, match="probability"):
        Grayscale(1.5)
    with pytest.raises(ValueError, match="at least one task"):
        Localizable(())
    with pytest.raises(ValueError, match="rotation"):
        Localizable(("rotate",))
    with pytest.raises(TypeError, match="not an op"):
        check_views({"a": ("crop",)})


def strided_copy(images: torch.Tensor, gap: int = 5) -> torch.Tensor:
    """The same pixels as a batch whose rows are contiguous but ``gap`` elements apart,
    channels and images with gaps too (the layout ``read_windows`` hands over)."""
    b, c, h, w = images.shape
    wide = torch.full((b, c, h + 1, w + gap), 77, dtype=images.dtype)
    wide[:, :, :h, :w] = images
    return wide[:, :, :h, :w]


def every_op():
    from pipelines.randaugment import Cutout, RandAugment
    from pipelines.resized_crop import RandomResizedCrop
    from pipelines.simclr_ops import ColorJitter
    from pipelines.tf_color import TFColorJitter
    from pipelines.views import PerBatch

    return [CropFlip(4), CropFlip(2, mode="reflect"), Localizable(), Localizable(("perm",), "vertical"),
            Grayscale(0.5), ColorJitter(0.5, 1.0), RandAugment(), Cutout(), RandomResizedCrop(input_size=16),
            TFColorJitter(0.5, 1.0), PerBatch(TFColorJitter(0.2, 1.0))]


@pytest.mark.parametrize("op", every_op(), ids=lambda op: type(op).__name__)
def test_every_op_takes_a_batch_with_gaps_between_its_rows(op):
    """``apply`` and ``apply_`` on a row-strided batch equal ``apply`` on its contiguous copy;
    ``apply`` leaves its input alone, and ``apply_`` writes no byte between the rows."""
    x = batch(b=9, side=16, seed=8)
    params = op.draw(9, torch.Generator().manual_seed(2))
    expect = op.apply(x, params)
    strided = strided_copy(x)
    assert not strided.is_contiguous()
    assert torch.equal(op.apply(strided, params), expect)
    assert torch.equal(strided, x)
    wide = strided_copy(x)
    buffer = wide.as_strided((wide.untyped_storage().nbytes(),), (1,), 0)
    assert torch.equal(op.apply_(wide, params), expect)
    outside = torch.ones_like(buffer, dtype=torch.bool)
    outside.as_strided(wide.shape, wide.stride(), 0).fill_(False)
    assert (buffer[outside] == 77).all()


def test_finish_view_hands_over_contiguous_batches():
    strided = strided_copy(batch())
    out = finish_view("images", strided, {})
    assert out["images"].is_contiguous() and torch.equal(out["images"], strided)
    normalized = finish_view("images", strided, {}, normalize_to=((0.5,) * 3, (0.25,) * 3))["images"]
    assert normalized.is_contiguous() and normalized.dtype == torch.float32
