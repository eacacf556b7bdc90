"""The Keras CIFAR ResNet of G-SimCLR's notebooks, registered in timm as ``resnet38v2_cifar``.

The notebooks (``ariG23498/G-SimCLR``, ``CIFAR10/*.ipynb``) download
``zoo/resnet/resnet_cifar10.py`` of GoogleCloudPlatform/keras-idiomatic-programmer and
build its headless model with ``n = 4``: ``depth = 9n + 2 = 38``, ``n_blocks = (depth - 2)
// 9 - 1 = 3``, ``stem`` then ``learner``; the projection head reads its global average pool.

    stem     conv3x3(16) - BN - ReLU                                    [B, 16, 32, 32]
    stage 1  bottleneck width 16, out 64  (x4 filters), stride 1       [B, 64, 32, 32]
    stage 2  bottleneck width 64, out 128 (x2 filters), stride 2       [B, 128, 16, 16]
    stage 3  bottleneck width 128, out 256 (x2 filters), stride 2      [B, 256, 8, 8]
    pool     global average                                             [B, 256]

Each stage is one projection block (its shortcut a strided 1x1 conv with bias, no BN) and
``n - 1 = 3`` identity blocks; a block is conv1x1 - BN - ReLU - conv3x3 (the stride) - BN -
ReLU - conv1x1 - BN, the shortcut added, then ReLU: 12 blocks of 3 convs and the stem, 37
conv layers (38 with the classifier the notebooks leave out). The "v2" of the name is the
9n + 2 bottleneck layout of Keras' ResNet-v2 CIFAR example; the blocks of the file the
notebooks fetch are post-activation (its header: "version 1").

Keras' defaults are kept: every conv has a bias; ``he_normal`` weights (a normal truncated at
two standard deviations, ``std = sqrt(2 / fan_in) / 0.8796``), zero biases; BatchNorm with
epsilon 1e-3 and moving-average momentum 0.99 (torch's ``momentum = 0.01``); "same" padding
as TF pads it (a stride-2 3x3 conv on an even side pads one pixel right and below only).
"""

from __future__ import annotations

import math

import torch
from timm.layers import create_conv2d
from timm.models import generate_default_cfgs

from gssl_fast.model.backbones import _build, _cfg, _PooledHead, _register

nn = torch.nn

KERAS_BN = dict(eps=1e-3, momentum=0.01)  # Keras BatchNormalization(momentum=0.99, epsilon=1e-3)
STAGES = ((16, 4, 1), (64, 2, 2), (128, 2, 2))  # resnet_cifar10.learner: (bottleneck width, filter multiplier, stride)


def keras_conv(in_chs: int, out_chs: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """``Conv2D(out_chs, kernel, strides=stride, padding="same" | "valid", kernel_initializer="he_normal")``:
    3x3 convs pad as TF's "same" (timm's ``Conv2dSame`` where the stride is 2), 1x1 convs do not pad."""
    conv = create_conv2d(in_chs, out_chs, kernel, stride=stride, padding="same" if kernel > 1 else "", bias=True)
    std = math.sqrt(2.0 / (in_chs * kernel * kernel)) / 0.87962566103423978  # Keras' truncated he_normal
    nn.init.trunc_normal_(conv.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(conv.bias)
    return conv


class KerasBottleneck(nn.Module):
    """``resnet_cifar10.projection_block`` (``project=True``) or ``identity_block``:
    ``[B, in_chs, H, W] -> [B, width * mul, H / stride, W / stride]``."""

    def __init__(self, in_chs: int, width: int, mul: int, stride: int = 1, project: bool = False):
        super().__init__()
        out_chs = width * mul
        self.conv1, self.bn1 = keras_conv(in_chs, width, 1), nn.BatchNorm2d(width, **KERAS_BN)
        self.conv2, self.bn2 = keras_conv(width, width, 3, stride), nn.BatchNorm2d(width, **KERAS_BN)
        self.conv3, self.bn3 = keras_conv(width, out_chs, 1), nn.BatchNorm2d(out_chs, **KERAS_BN)
        self.shortcut = keras_conv(in_chs, out_chs, 1, stride) if project else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.shortcut(x))


class KerasCifarResNet(_PooledHead):
    """``resnet_cifar10.stem`` + ``learner`` of depth ``9n + 2``, with timm's head API.

    ``[B, 3, H, W] float -> forward_features -> [B, 256, H / 4, W / 4]`` (``[B, 256, 8, 8]`` at 32 px).
    """

    def __init__(self, depth: int = 38, num_classes: int = 10, in_chans: int = 3, global_pool: str = "avg",
                 drop_rate: float = 0.0, device=None, dtype=None):
        super().__init__()
        if (depth - 2) % 9 or depth < 11:
            raise ValueError(f"KerasCifarResNet depth must be 9n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 9
        self.conv1, self.bn1 = keras_conv(in_chans, 16, 3), nn.BatchNorm2d(16, **KERAS_BN)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=16, reduction=1, module="act1")]
        in_chs = 16
        for i, (width, mul, stride) in enumerate(STAGES):
            blocks = [KerasBottleneck(in_chs, width, mul, stride, project=True)]
            blocks += [KerasBottleneck(width * mul, width, mul) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            in_chs = width * mul
            self.feature_info.append(dict(num_chs=in_chs, reduction=2**i, module=f"layer{i + 1}"))
        self._init_head(in_chs, num_classes, global_pool, drop_rate)
        self._place(device, dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


default_cfgs = generate_default_cfgs({"resnet38v2_cifar": _cfg()})  # no published weights


@_register
def resnet38v2_cifar(pretrained: bool = False, **kwargs) -> KerasCifarResNet:
    """The Keras CIFAR ResNet of G-SimCLR's notebooks (``n = 4``, depth 38, bottleneck
    blocks, 256-d pooled output), 1.11M parameters."""
    return _build(KerasCifarResNet, "resnet38v2_cifar", pretrained, depth=38, **kwargs)
