"""kornia.augmentation against our reference view ops (pipelines.views), pixel for pixel.

Findings that bench/kornia_ops.py reports beside its timings: kornia's crop + flip, replayed
at the offsets and flips kornia drew, is exactly our ``crop_flip`` (zero padding, crop
from the padded image like torchvision); kornia's grayscale uses 0.299 for red where
torchvision (our reference) uses 0.2989, so the greys differ by at most one level.
Skipped when kornia is not installed (it is not a dependency of the project).
"""

import pytest
import torch

pytest.importorskip("kornia")

import kornia  # noqa: E402
import kornia.augmentation as K  # noqa: E402

from bench.kornia_ops import kornia_crop_flip, kornia_drawn_crop_flip  # noqa: E402
from pipelines.augment import crop_flip  # noqa: E402
from pipelines.views import Grayscale  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def images(side, device, batch=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, side, side), generator=g, dtype=torch.uint8).to(device)


def test_kornia_refuses_uint8():
    with pytest.raises(TypeError):
        K.RandomGrayscale(p=1.0)(images(8, "cpu", batch=2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("side, padding", [(32, 4), (64, 4), (16, 2)])
def test_kornia_crop_flip_is_our_crop_flip_at_its_draws(side, padding, device):
    torch.manual_seed(0)  # kornia draws from torch's global generator
    x = images(side, device)
    seq = kornia_crop_flip(side, padding)
    got = seq(x.float())
    drawn = kornia_drawn_crop_flip(seq)
    # Its defaults are ours: zero padding, offsets drawn over every position of the padded image.
    assert seq[0].flags["padding_mode"] == "constant" and seq[0].flags["fill"] == 0
    for key in ("crop_y", "crop_x"):
        assert drawn[key].min() == 0 and drawn[key].max() == 2 * padding
    assert 0 < drawn["hflip"].sum() < len(x)
    want = crop_flip(x, drawn["crop_y"], drawn["crop_x"], drawn["hflip"], padding)
    assert got.dtype == torch.float32 and torch.equal(got, want.float())


@pytest.mark.parametrize("device", DEVICES)
def test_kornia_grayscale_is_ours_within_one_grey_level(device):
    torch.manual_seed(0)
    x = images(32, device)
    aug = K.RandomGrayscale(p=0.2)
    got = aug(x.float())
    mask = (aug._params["batch_prob"] > 0.5).long()
    want = Grayscale(0.2).apply(x, {"grayscale": mask.to(device)})
    grey = mask.bool().to(device)
    assert 0 < grey.sum() < len(x)
    assert torch.equal(got[~grey], x[~grey].float())  # the images it kept are untouched
    diff = (got.to(torch.uint8).int() - want.int()).abs()  # truncated, as torchvision casts its grey
    assert diff.max() == 1 and (diff[grey] > 0).float().mean() < 0.05


def test_grayscale_weights_differ_in_red():
    from torchvision.transforms.v2.functional import rgb_to_grayscale

    unit = torch.eye(3).view(3, 3, 1, 1)
    torch.testing.assert_close(rgb_to_grayscale(unit).flatten(), torch.tensor([0.2989, 0.587, 0.114]))
    torch.testing.assert_close(kornia.color.rgb_to_grayscale(unit).flatten(), torch.tensor([0.299, 0.587, 0.114]))
    # torchvision's weights sum to 0.9999 and its uint8 cast truncates: white turns 254; kornia's stays 255.
    white = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    assert Grayscale(1.0).apply(white, {"grayscale": torch.ones(1, dtype=torch.long)}).max() == 254
    assert K.RandomGrayscale(p=1.0)(white.float()).max() == 255
