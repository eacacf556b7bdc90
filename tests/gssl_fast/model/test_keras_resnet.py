"""``resnet38v2_cifar`` against the Keras definition G-SimCLR's notebooks build:
``resnet_cifar10.stem`` + ``learner`` of GoogleCloudPlatform/keras-idiomatic-programmer
(zoo/resnet/resnet_cifar10.py) with ``n = 4``, transcribed below."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from gssl_fast.model.keras_resnet import KerasCifarResNet

N = 4  # the notebooks' cell: n = 4; depth = n * 9 + 2; n_blocks = ((depth - 2) // 9) - 1


def keras_convs(n: int = N) -> list[tuple[int, int, int, int, bool]]:
    """``(kernel, in, out, stride, followed by BatchNormalization)`` of every Conv2D of
    ``stem`` + ``learner``, in the order the Keras code creates them (a projection
    block's shortcut first)."""
    depth = n * 9 + 2
    n_blocks = ((depth - 2) // 9) - 1
    convs = [(3, 3, 16, 1, True)]  # stem
    x = 16
    for n_filters, strides, mul in ((16, 1, 4), (64, 2, 2), (128, 2, 2)):  # learner's residual_group calls
        convs += [(1, x, n_filters * mul, strides, False), (1, x, n_filters, 1, True),
                  (3, n_filters, n_filters, strides, True), (1, n_filters, n_filters * mul, 1, True)]  # projection
        x = n_filters * mul
        for _ in range(n_blocks):  # identity_block
            convs += [(1, x, n_filters, 1, True), (3, n_filters, n_filters, 1, True), (1, n_filters, x, 1, True)]
    return convs


def keras_trainable_params(n: int = N) -> int:
    """Conv2D kernels and biases, BatchNormalization gamma and beta."""
    return sum(k * k * cin * cout + cout + (2 * cout if bn else 0) for k, cin, cout, _, bn in keras_convs(n))


def torch_convs(model) -> list[tuple[int, int, int, int]]:
    """The model's convs in the Keras order: stem, then per block (shortcut,) conv1, conv2, conv3."""
    out = [model.conv1]
    for stage in (model.layer1, model.layer2, model.layer3):
        for block in stage:
            out += ([block.shortcut] if isinstance(block.shortcut, torch.nn.Conv2d) else [])
            out += [block.conv1, block.conv2, block.conv3]
    return [(c.kernel_size[0], c.in_channels, c.out_channels, c.stride[0]) for c in out]


def without_bn(convs):
    return [c[:4] for c in convs]


def test_depth_width_bottleneck_and_256_d_output_are_the_keras_models():
    model = timm.create_model("resnet38v2_cifar", num_classes=0).eval()
    assert isinstance(model, KerasCifarResNet) and model.num_features == 256
    assert torch_convs(model) == without_bn(keras_convs())
    assert sum(bn for *_, bn in keras_convs()) == 37  # convs on the main path: depth 38 with the classifier
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [4, 4, 4]  # 1 projection + 3 identity
    assert all(b.conv1.kernel_size == (1, 1) and b.conv2.kernel_size == (3, 3) and b.conv3.kernel_size == (1, 1)
               for s in (model.layer1, model.layer2, model.layer3) for b in s)  # bottlenecks
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is not None for c in convs)  # Keras' Conv2D(use_bias=True)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 37 and all(b.eps == 1e-3 and b.momentum == 0.01 for b in bns)
    assert sum(p.numel() for p in model.parameters()) == keras_trainable_params()
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert model.forward_features(x).shape == (2, 256, 8, 8) and model(x).shape == (2, 256)


def keras_forward(model, x: torch.Tensor) -> torch.Tensor:
    """The Keras graph in inference mode, op by op with the model's weights: post-activation
    bottlenecks (conv-BN-ReLU, conv-BN-ReLU, conv-BN, add, ReLU), TF "same" padding."""

    def conv(c, x):
        k, s = c.kernel_size[0], c.stride[0]
        if k == 3:  # TF "same": total padding max((ceil(h / s) - 1) * s + k - h, 0), the odd pixel after
            h = x.shape[-1]
            total = max((-(-h // s) - 1) * s + k - h, 0)
            x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
        return F.conv2d(x, c.weight, c.bias, stride=s)

    def bn(b, x):
        return F.batch_norm(x, b.running_mean, b.running_var, b.weight, b.bias, False, 0.0, 1e-3)

    x = F.relu(bn(model.bn1, conv(model.conv1, x)))
    for stage in (model.layer1, model.layer2, model.layer3):
        for block in stage:
            shortcut = conv(block.shortcut, x) if isinstance(block.shortcut, torch.nn.Conv2d) else x
            y = F.relu(bn(block.bn1, conv(block.conv1, x)))
            y = F.relu(bn(block.bn2, conv(block.conv2, y)))
            x = F.relu(bn(block.bn3, conv(block.conv3, y)) + shortcut)
    return x.mean(dim=(2, 3))


@pytest.mark.parametrize("side", [32, 17])
def test_forward_is_the_keras_graph(side):
    torch.manual_seed(0)
    model = timm.create_model("resnet38v2_cifar", num_classes=0)
    with torch.no_grad():  # BN statistics away from their initial values, so that they matter
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(3, 3, side, side)
    with torch.no_grad():
        torch.testing.assert_close(model(x), keras_forward(model, x), rtol=1e-5, atol=1e-5)


def test_keras_he_normal_init():
    """Truncated at two standard deviations of sqrt(2 / fan_in) / 0.8796; zero biases."""
    torch.manual_seed(0)
    model = timm.create_model("resnet38v2_cifar", num_classes=0)
    w = model.layer3[1].conv2.weight  # 3x3, 128 -> 128: fan_in 1152
    std = (2.0 / 1152) ** 0.5
    assert w.std().item() == pytest.approx(std, rel=0.05)
    assert w.abs().max().item() <= 2 * std / 0.87962566103423978 + 1e-6
    assert all(c.bias.abs().max() == 0 for c in model.modules() if isinstance(c, torch.nn.Conv2d))
