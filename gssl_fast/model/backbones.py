"""The CIFAR networks of the papers, registered in timm's registry.

After ``import gssl_fast.model.backbones`` (``gssl_fast.model.network`` imports it), ``timm.create_model("resnet32_cifar", num_classes=10)`` builds a
CIFAR net like any timm model, and ``timm.list_models("*cifar*")`` lists them. Every net has the
timm API: ``num_features``, ``forward_features(x) -> [B, C, h, w]``, ``forward_head(x, pre_logits=True)
-> [B, num_features]``, ``reset_classifier``, ``get_classifier``; ``num_classes=0`` makes ``forward``
return the pooled features.

| name | what | params (10 classes) |
|---|---|---|
| resnet{8,20,32,44,56}_cifar | He et al. 2016 CIFAR ResNet, option-A shortcuts (LDAM-DRW code) | 0.08-0.85M |
| wrn28_2, wrn40_2 | pre-activation Wide ResNet (Zagoruyko & Komodakis 2016): FixMatch, PGD | 1.47M / 2.24M |
| resnet18_cifar | timm ResNet-18, 3x3 stride-1 stem, no max-pool (Tiny-ImageNet 64x64) | 11.17M |
| resnet38v2_cifar | the Keras bottleneck CIFAR ResNet of G-SimCLR's notebooks, 256-d (``keras_resnet.py``) | 1.11M |

Last conv layer (for Grad-CAM), as returned by ``last_conv_name(model)``:
``layer3.{n-1}.conv2`` for the CIFAR ResNets (n blocks per stage, n = (depth - 2) / 6),
``block3.{n-1}.conv2`` for the Wide ResNets (n = (depth - 4) / 6; the final ``bn`` and ``act`` follow it),
``layer4.1.conv2`` for resnet18_cifar. The map that is pooled is ``forward_features(x)``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock as TimmBasicBlock
from timm.models.resnet import ResNet

from pipelines.datasets.arrays import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD

nn = torch.nn


class _PooledHead(nn.Module):
    """timm's head API shared by the CIFAR nets: global pool -> dropout(drop_rate) -> fc."""

    def _init_head(self, num_features: int, num_classes: int, global_pool: str, drop_rate: float) -> None:
        self.num_features = self.head_hidden_size = num_features
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.global_pool, self.fc = create_classifier(num_features, num_classes, pool_type=global_pool)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A fresh classifier for ``num_classes`` (0: ``nn.Identity``, forward returns pooled features)."""
        ref = next(self.parameters())
        pool = self.global_pool.pool_type if global_pool is None else global_pool
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=pool)
        self.fc.to(device=ref.device, dtype=ref.dtype)
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B, C, h, w]`` feature map -> ``[B, C]`` pooled features or ``[B, num_classes]`` logits."""
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _place(self, device, dtype) -> None:
        # create_model may pass device/dtype (timm >= 1.0.20); move once instead of threading them.
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)


# ---- He et al. CIFAR ResNet ------------------------------------------------------------------


class PadShortcut(nn.Module):
    """Option-A shortcut, parameter-free: subsample by ``stride``, zero-pad the new channels.

    ``[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]``; the padding is split evenly on both
    sides of the channel axis, as in the LDAM-DRW code (``planes // 4`` each side).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = (out_chs - in_chs) // 2, out_chs - in_chs - (out_chs - in_chs) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class CifarBasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        changes = stride != 1 or in_chs != out_chs
        self.shortcut = PadShortcut(in_chs, out_chs, stride) if changes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(_PooledHead):
    """He et al. (2016) section 4.2: 3x3 stem of 16, three stages of n blocks (16/32/64), depth 6n+2.

    ``[B, 3, 32, 32] float -> forward_features -> [B, 64, 8, 8]``.
    """

    def __init__(self, depth: int = 32, num_classes: int = 10, in_chans: int = 3, global_pool: str = "avg",
                 drop_rate: float = 0.0, device=None, dtype=None):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CifarResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=16, reduction=1, module="act1")]
        in_chs = 16
        for i, out_chs in enumerate((16, 32, 64)):
            stride = 1 if i == 0 else 2
            blocks = [CifarBasicBlock(in_chs if j == 0 else out_chs, out_chs, stride if j == 0 else 1)
                      for j in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=2**i, module=f"layer{i + 1}"))
            in_chs = out_chs
        self._init_head(64, num_classes, global_pool, drop_rate)
        for m in self.modules():  # the LDAM-DRW code's _weights_init: kaiming normal, fan_in
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
        self._place(device, dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


# ---- Wide ResNet -----------------------------------------------------------------------------


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-act-conv3x3-BN-act-conv3x3 plus the shortcut.

    When the shape changes, the 1x1 shortcut conv reads the pre-activated input (as in the
    WRN code of Zagoruyko and of Hendrycks et al.), or the raw one with
    ``raw_shortcut`` (FixMatch's reference, ``activate_before_residual`` off); otherwise
    the shortcut is the raw input.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, act_layer: Callable[[], nn.Module],
                 bn_momentum: float, raw_shortcut: bool = False):
        super().__init__()
        self.raw_shortcut = raw_shortcut
        self.bn1 = nn.BatchNorm2d(in_chs, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.act1, self.act2 = act_layer(), act_layer()
        changes = stride != 1 or in_chs != out_chs
        self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False) if changes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        out = self.conv2(self.act2(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(x if self.raw_shortcut else pre))


class WideResNet(_PooledHead):
    """WRN-depth-k: 3x3 stem of 16, three stages of n = (depth-4)/6 blocks of 16k/32k/64k, final BN-act.

    ``[B, 3, 32, 32] float -> forward_features -> [B, 64k, 8, 8]``. ``drop_rate`` is applied before the
    classifier only (the papers' runs use no dropout inside blocks). FixMatch's variant is
    ``leaky_slope=0.1, bn_momentum=0.001, raw_shortcuts=True`` (google-research's
    ``residual``: the first blocks of stages 2 and 3 feed their shortcut the raw input); the
    default is the original ReLU WRN.
    """

    def __init__(self, depth: int = 28, widen_factor: int = 2, num_classes: int = 10, in_chans: int = 3,
                 global_pool: str = "avg", drop_rate: float = 0.0, leaky_slope: float = 0.0,
                 bn_momentum: float = 0.1, raw_shortcuts: bool = False, device=None, dtype=None):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        act_layer = partial(nn.LeakyReLU, leaky_slope, inplace=True) if leaky_slope else partial(nn.ReLU, inplace=True)
        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        self.feature_info = [dict(num_chs=16, reduction=1, module="conv1")]
        in_chs = 16
        for i, out_chs in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = [
                WideBasicBlock(in_chs if j == 0 else out_chs, out_chs, stride if j == 0 else 1, act_layer, bn_momentum,
                               raw_shortcut=raw_shortcuts and i > 0)
                for j in range(n)
            ]
            self.add_module(f"block{i + 1}", nn.Sequential(*blocks))
            in_chs = out_chs
            if i < 2:  # the last stage's map is taken after the final BN-act below
                self.feature_info.append(dict(num_chs=out_chs, reduction=2**i, module=f"block{i + 1}"))
        self.bn = nn.BatchNorm2d(in_chs, momentum=bn_momentum)
        self.act = act_layer()
        self.feature_info.append(dict(num_chs=in_chs, reduction=4, module="act"))
        self._init_head(in_chs, num_classes, global_pool, drop_rate)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nonlinearity = "leaky_relu" if leaky_slope else "relu"
                nn.init.kaiming_normal_(m.weight, a=leaky_slope, mode="fan_out", nonlinearity=nonlinearity)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        self._place(device, dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.act(self.bn(x))


# ---- ResNet-18 with the CIFAR stem -----------------------------------------------------------


class CifarStemResNet(ResNet):
    """timm ``ResNet`` whose stem is one 3x3 stride-1 conv with no max-pool.

    The spatial size is kept through the stem, so ``[B, 3, 64, 64] -> forward_features -> [B, 512, 8, 8]``.
    Everything else (blocks, head, ``forward_intermediates``) is timm's. The last BN of each block is not
    zero-initialized by default, as in the usual PyTorch CIFAR ResNet-18.
    """

    def __init__(self, *args, in_chans: int = 3, zero_init_last: bool = False, **kwargs):
        super().__init__(*args, in_chans=in_chans, zero_init_last=zero_init_last, **kwargs)
        ref = self.bn1.weight
        self.conv1 = nn.Conv2d(in_chans, self.bn1.num_features, 3, stride=1, padding=1, bias=False,
                               device=ref.device, dtype=ref.dtype)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()
        # timm's stem downsamples by 4; this one by 1, so every feature's reduction shrinks.
        self.feature_info = [dict(f, reduction=1 if i == 0 else f["reduction"] // 4)
                             for i, f in enumerate(self.feature_info)]


# ---- registration ----------------------------------------------------------------------------


def _cfg(**kwargs) -> dict:
    cfg = dict(url="", num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
               interpolation="bilinear", mean=CIFAR_MEAN, std=CIFAR_STD, first_conv="conv1", classifier="fc")
    return {**cfg, **kwargs}


# No weights are published for these: pretrained=True raises timm's "No pretrained weights exist".
default_cfgs = generate_default_cfgs({
    **{f"resnet{d}_cifar": _cfg() for d in (8, 20, 32, 44, 56)},
    "wrn28_2": _cfg(),
    "wrn40_2": _cfg(),
    "resnet18_cifar": _cfg(num_classes=200, input_size=(3, 64, 64), mean=IMAGENET_MEAN, std=IMAGENET_STD),
})


def _build(cls: type, variant: str, pretrained: bool, **kwargs) -> nn.Module:
    # four feature maps (stem and three stages), not timm's default five
    return build_model_with_cfg(cls, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs)


CIFAR_BACKBONES: dict[str, Callable[..., nn.Module]] = {}  # name -> timm entrypoint, in this file


def _register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    CIFAR_BACKBONES[fn.__name__] = fn
    return register_model(fn)


@_register
def resnet8_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-8 (n=1), 0.08M parameters: a tiny net for demos and tests."""
    return _build(CifarResNet, "resnet8_cifar", pretrained, depth=8, **kwargs)


@_register
def resnet20_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 (n=3), 0.27M parameters."""
    return _build(CifarResNet, "resnet20_cifar", pretrained, depth=20, **kwargs)


@_register
def resnet32_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32 (n=5), 0.46M parameters: the long-tailed CIFAR and analysis backbone."""
    return _build(CifarResNet, "resnet32_cifar", pretrained, depth=32, **kwargs)


@_register
def resnet44_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-44 (n=7), 0.66M parameters."""
    return _build(CifarResNet, "resnet44_cifar", pretrained, depth=44, **kwargs)


@_register
def resnet56_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-56 (n=9), 0.85M parameters."""
    return _build(CifarResNet, "resnet56_cifar", pretrained, depth=56, **kwargs)


@_register
def wrn28_2(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-28-2, 1.47M parameters: the FixMatch backbone."""
    return _build(WideResNet, "wrn28_2", pretrained, depth=28, widen_factor=2, **kwargs)


@_register
def wrn40_2(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-40-2, 2.24M parameters: the adversarial-training backbone."""
    return _build(WideResNet, "wrn40_2", pretrained, depth=40, widen_factor=2, **kwargs)


@_register
def resnet18_cifar(pretrained: bool = False, **kwargs) -> CifarStemResNet:
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool, 11.17M parameters: the Tiny-ImageNet backbone."""
    args = dict(block=TimmBasicBlock, layers=(2, 2, 2, 2))
    return build_model_with_cfg(CifarStemResNet, "resnet18_cifar", pretrained, **dict(args, **kwargs))
