"""The CIFAR backbones (gssl_fast.model.backbones) through timm's registry, and build_backbone's user errors."""

import pytest
import timm
import torch

from gssl_fast.model.backbones import CIFAR_BACKBONES, PadShortcut
from gssl_fast.config import ModelConfig
from gssl_fast.model.network import build_backbone, last_conv_name
from pipelines.errors import UserError

NAMES = sorted(CIFAR_BACKBONES)
# He et al. 2016 Table 6, FixMatch / WRN papers, the CIFAR ResNet-18: parameters with 10 classes
PARAMS = {
    "resnet20_cifar": 0.27e6,
    "resnet32_cifar": 0.46e6,
    "resnet44_cifar": 0.66e6,
    "resnet56_cifar": 0.85e6,
    "wrn28_2": 1.47e6,
    "wrn40_2": 2.24e6,
    "resnet18_cifar": 11.17e6,
}
WIDTH = {"wrn28_2": 128, "wrn40_2": 128, "resnet18_cifar": 512, "resnet38v2_cifar": 256}  # 64 for the CIFAR ResNets


def _side(name: str) -> int:
    return 64 if name == "resnet18_cifar" else 32


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered_in_timm():
    assert set(timm.list_models("*cifar*")) >= {n for n in NAMES if "cifar" in n}
    assert {"wrn28_2", "wrn40_2"} <= set(timm.list_models("wrn*"))
    assert all(timm.is_model(n) for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_timm_api_with_classes(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    side, width = _side(name), WIDTH.get(name, 64)
    x = torch.randn(2, 3, side, side)
    feats = model.forward_features(x)
    assert feats.shape == (2, width, 8, 8)  # 32 / 4 for the CIFAR nets, 64 / 8 for resnet18_cifar
    assert model.num_features == width
    assert model(x).shape == (2, 10)
    assert model.forward_head(feats, pre_logits=True).shape == (2, width)
    fc = model.get_classifier()
    assert isinstance(fc, torch.nn.Linear) and (fc.in_features, fc.out_features) == (width, 10)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", NAMES)
def test_no_classes_forward_is_pre_logits(name):
    """num_classes=0 gives pooled features, equal to forward_head(pre_logits=True) of the same weights."""
    torch.manual_seed(0)
    full = timm.create_model(name, num_classes=10).eval()
    bare = timm.create_model(name, num_classes=0).eval()
    state = {k: v for k, v in full.state_dict().items() if not k.startswith("fc.")}
    bare.load_state_dict(state)
    assert isinstance(bare.get_classifier(), torch.nn.Identity)
    x = torch.randn(2, 3, _side(name), _side(name))
    with torch.no_grad():
        expected = full.forward_head(full.forward_features(x), pre_logits=True)
        got = bare(x)
    assert got.shape == (2, bare.num_features)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts(name):
    assert _n_params(timm.create_model(name, num_classes=10)) == pytest.approx(PARAMS[name], rel=0.03)


def test_resnet18_cifar_keeps_64_pixels_through_the_stem():
    model = timm.create_model("resnet18_cifar", num_classes=0).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
    assert [t.shape[-1] for t in inter] == [64, 64, 32, 16, 8]  # stem, layer1..layer4
    assert inter[1].shape == (1, 64, 64, 64)
    assert final.shape == (1, 512, 8, 8)
    assert model.forward_features(x).shape == (1, 512, 8, 8)
    assert model.feature_info[-1]["reduction"] == 8
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)


def test_option_a_shortcut_has_no_parameters():
    model = timm.create_model("resnet32_cifar", num_classes=10)
    pads = [m for m in model.modules() if isinstance(m, PadShortcut)]
    assert len(pads) == 2  # entering stage 2 and stage 3
    assert not any("shortcut" in n for n, _ in model.named_parameters())
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_features_only_maps():
    model = timm.create_model("wrn28_2", features_only=True)
    maps = model(torch.randn(1, 3, 32, 32))
    assert [tuple(t.shape[1:]) for t in maps] == [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)]


def test_wrn_fixmatch_variant_options():
    model = timm.create_model("wrn28_2", leaky_slope=0.1, bn_momentum=0.001)
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in model.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    assert all(m.momentum == 0.001 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_fixmatchs_wrn_feeds_the_raw_input_to_the_later_stages_shortcuts():
    """google-research's ``residual``: only the first stage (activate_before_residual)
    pre-activates the shortcut's input; the first blocks of stages 2 and 3 read it raw."""
    model = timm.create_model("wrn28_2", num_classes=0, raw_shortcuts=True)
    assert [b.raw_shortcut for b in (model.block1[0], model.block2[0], model.block3[0])] == [False, True, True]
    block = model.block2[0].eval()
    seen = []
    block.shortcut.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x = torch.randn(2, 32, 8, 8)
    block(x)
    assert torch.equal(seen[0], x)
    plain = timm.create_model("wrn28_2", num_classes=0)
    assert not any(b.raw_shortcut for stage in (plain.block1, plain.block2, plain.block3) for b in stage)


def test_xavier_linear_init_is_the_fixmatch_references_head():
    from gssl_fast.model.network import initialize

    torch.manual_seed(0)
    head = initialize(torch.nn.Sequential(torch.nn.Linear(400, 600), torch.nn.Conv2d(3, 3, 1)), "xavier_linear")
    assert torch.count_nonzero(head[0].bias) == 0
    assert head[0].weight.std().item() == pytest.approx((2 / (400 + 600)) ** 0.5, rel=0.05)


LAST_CONVS = [("resnet32_cifar", "layer3.4.conv2"), ("wrn28_2", "block3.3.conv2"), ("resnet18_cifar", "layer4.1.conv2")]


@pytest.mark.parametrize("name, conv", LAST_CONVS)
def test_last_conv_name(name, conv):
    model = timm.create_model(name, num_classes=0)
    assert last_conv_name(model) == conv
    assert isinstance(model.get_submodule(conv), torch.nn.Conv2d)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = timm.create_model("resnet8_cifar", num_classes=10).train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_build_backbone_cifar_default():
    model = build_backbone(ModelConfig(backbone="resnet32_cifar", drop_rate=0.2, channels_last=True))
    assert model.num_features == 64 and model.drop_rate == 0.2
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def test_build_backbone_timm_builtin():
    model = build_backbone(ModelConfig(backbone="resnet18")).eval()
    assert model.num_features == 512
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 512)


@pytest.mark.parametrize("name, close", [("resnet33_cifar", "resnet32_cifar"), ("resnet181", "resnet18")])
def test_build_backbone_unknown_name_suggests(name, close):
    with pytest.raises(UserError) as err:
        build_backbone(ModelConfig(backbone=name))
    msg = str(err.value)
    assert f"model.backbone = {name!r}" in msg
    assert close in msg.split("close matches:")[1]
    assert all(n in msg for n in CIFAR_BACKBONES)


def test_build_backbone_pretrained_without_weights():
    with pytest.raises(UserError, match="no pretrained weights.*model.pretrained = false"):
        build_backbone(ModelConfig(backbone="resnet32_cifar", pretrained=True))


def test_build_backbone_pretrained_download_fails(monkeypatch):
    """No internet: the download error becomes a UserError (the real one takes ~50 s of retries)."""

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(UserError, match="could not load the pretrained weights.*'resnet18'.*Name or service"):
        build_backbone(ModelConfig(backbone="resnet18", pretrained=True))


def test_pretrained_weights_come_from_the_local_cache_only(tmp_path, monkeypatch):
    """No network wait: weights missing from the (empty) cache fail at once, naming the way out."""
    import huggingface_hub.constants as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "HUGGINGFACE_HUB_CACHE", str(tmp_path))
    before = hub.HF_HUB_OFFLINE
    with pytest.raises(UserError, match="local timm / Hugging Face cache.*HF_HUB_OFFLINE=0"):
        build_backbone(ModelConfig(backbone="resnet18", pretrained=True))
    assert hub.HF_HUB_OFFLINE == before  # the setting is put back


def test_the_input_layer_normalizes_pixels_and_leaves_its_input_alone():
    from gssl_fast.model.network import InputNormalize

    layer = InputNormalize((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    pixels = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(layer(pixels), (pixels.float() / 255.0 - layer.mean) / layer.std)
    floats = torch.rand(4, 3, 8, 8, requires_grad=True)
    before = floats.detach().clone()
    out = layer(floats)
    assert torch.equal(out, (before - layer.mean) / layer.std) and torch.equal(floats.detach(), before)
    out.sum().backward()  # attacks need the gradient with respect to the pixels
    assert torch.allclose(floats.grad, (1 / layer.std).expand_as(floats))
