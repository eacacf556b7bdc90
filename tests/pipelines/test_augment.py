import pytest
import torch
import torchvision.transforms.functional as TF

from pipelines.augment import (
    crop_flip,
    crop_with_padding,
    draw_crop_flip,
    flip_images,
    normalize,
    pad_and_mirror,
    read_windows,
)
from pipelines.localizable import (
    PARAM_KEYS,
    apply_localizable_,
    draw_localizable,
    reference_localizable,
)


def batch(b=6, side=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, side, side), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("padding", [0, 1, 4])
def test_crop_matches_torchvision_per_sample(padding):
    x = batch(10, 8)
    p = draw_crop_flip(10, padding=padding, generator=torch.Generator().manual_seed(1))
    out = crop_with_padding(x, p["crop_y"], p["crop_x"], padding)
    for i in range(10):
        padded = TF.pad(x[i], [padding] * 4)
        y, xo = int(p["crop_y"][i]), int(p["crop_x"][i])
        assert torch.equal(out[i], TF.crop(padded, y, xo, 8, 8))


def reference_crop_flip(x, crop_y, crop_x, hflip, padding, mode="constant"):
    """torchvision per sample: pad (``RandomCrop``'s padding_mode), crop at the offsets,
    then hflip where drawn."""
    h, w = x.shape[-2:]
    out = []
    for i in range(x.shape[0]):
        im = TF.crop(TF.pad(x[i], [padding] * 4, padding_mode=mode), int(crop_y[i]), int(crop_x[i]), h, w)
        out.append(TF.hflip(im) if hflip[i] else im)
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("padding", [0, 1, 3, 4])
@pytest.mark.parametrize("shape", [(40, 3, 8, 8), (40, 3, 6, 10), (9, 1, 5, 7)])
def test_crop_flip_matches_torchvision_per_sample(dtype, padding, shape):
    g = torch.Generator().manual_seed(padding * 100 + shape[-1])
    x = torch.randint(0, 256, shape, generator=g).to(dtype) if dtype == torch.uint8 else torch.randn(shape, generator=g)
    cy, cx = (torch.randint(2 * padding + 1, shape[:1], generator=g) for _ in range(2))
    flip = torch.randint(2, shape[:1], generator=g)
    out = crop_flip(x, cy, cx, flip, padding)
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
    assert torch.equal(out, reference_crop_flip(x, cy, cx, flip, padding))


@pytest.mark.parametrize("padding, shape", [(4, (40, 3, 32, 32)), (1, (9, 3, 5, 7)), (3, (12, 3, 8, 6))])
def test_reflect_padded_crop_flip_matches_torchvision_per_sample(padding, shape):
    g = torch.Generator().manual_seed(padding)
    x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    cy, cx = (torch.randint(2 * padding + 1, shape[:1], generator=g) for _ in range(2))
    flip = torch.randint(2, shape[:1], generator=g)
    out = crop_flip(x, cy, cx, flip, padding, "reflect")
    assert torch.equal(out, reference_crop_flip(x, cy, cx, flip, padding, "reflect"))
    with pytest.raises(ValueError, match="reflect padding"):
        crop_flip(x[:, :, :2, :2], cy, cx, flip, 2, "reflect")


def test_crop_flip_channels_last_and_non_contiguous_inputs():
    x = batch(12, 8, seed=5)
    p = draw_crop_flip(12, padding=4, generator=torch.Generator().manual_seed(2))
    args = (p["crop_y"], p["crop_x"], p["hflip"])
    expect = reference_crop_flip(x, *args, 4)
    assert torch.equal(crop_flip(x.contiguous(memory_format=torch.channels_last), *args, 4), expect)
    assert torch.equal(crop_flip(x.transpose(2, 3).contiguous().transpose(2, 3), *args, 4), expect)
    no_crop = (torch.zeros(12, dtype=torch.int64),) * 2 + (p["hflip"],)
    assert torch.equal(crop_flip(x.contiguous(memory_format=torch.channels_last), *no_crop, 0),
                       reference_crop_flip(x, *no_crop, 0))


@pytest.mark.parametrize("padding", [0, 3])
def test_read_windows_hands_over_runs_of_the_staged_rows(padding, device):
    """The windows of a staged (padded, mirrored) dataset at drawn offsets are the crops
    and flips of the chosen images, a view of one run of ``L = (h - 1) * Wp + w``
    elements per channel: strides ``(C * L, L, Wp, 1)``."""
    images = batch(12, 10, seed=4)
    staged = pad_and_mirror(images.to(device), padding, mirrored=True)
    g = torch.Generator().manual_seed(5)
    src = torch.randint(12, (20,), generator=g)
    p = draw_crop_flip(20, padding=padding, generator=g)
    out = read_windows(staged, src, p["crop_y"], p["crop_x"], p["hflip"], (10, 10))
    wp, run = 10 + 2 * padding, 9 * (10 + 2 * padding) + 10
    assert out.stride() == (3 * run, run, wp, 1) and out.untyped_storage().nbytes() == 20 * 3 * run
    chosen = images.index_select(0, src)
    assert torch.equal(out.cpu(), flip_images(crop_with_padding(chosen, p["crop_y"], p["crop_x"], padding), p["hflip"]))


def test_crop_offsets_cover_range():
    p = draw_crop_flip(2000, padding=4, generator=torch.Generator().manual_seed(0))
    assert set(p["crop_y"].tolist()) == set(range(9)) and set(p["hflip"].tolist()) == {0, 1}


def test_flip_per_sample():
    x = batch(5)
    f = torch.tensor([0, 1, 1, 0, 1])
    out = flip_images(x, f)
    for i in range(5):
        assert torch.equal(out[i], TF.hflip(x[i]) if f[i] else x[i])


def test_normalize_matches_torchvision():
    x = batch(3)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    out = normalize(x, mean, std)
    ref = torch.stack([TF.normalize(TF.convert_image_dtype(im, torch.float32), mean, std) for im in x])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_apply_localizable_in_place_matches_reference(dtype):
    g = torch.Generator().manual_seed(6)
    x = torch.randint(0, 256, (20, 3, 8, 8), generator=g).to(dtype)
    params = draw_localizable(20, generator=g)
    kw = {k: params[k] for k in PARAM_KEYS}
    expect = reference_localizable(x, **kw)
    y = x.clone()
    assert apply_localizable_(y, **kw) is y
    assert torch.equal(y, expect)
    with pytest.raises(ValueError, match="contiguous"):
        apply_localizable_(x.transpose(2, 3), **kw)


def test_normalize_leaves_a_float_input_alone():
    from pipelines.augment import normalize

    floats = torch.rand(2, 3, 4, 4) * 255
    before = floats.clone()
    out = normalize(floats, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    assert torch.equal(floats, before) and torch.allclose(out, (before / 255 - 0.5) / 0.2, atol=1e-5)
