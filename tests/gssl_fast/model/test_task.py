import sys
import types

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from gssl_fast.config import LossConfig, ModelConfig, PretextConfig
from gssl_fast.model.heads import NormedLinear
from gssl_fast.model.losses import LDAMLoss, build_class_loss, combine_pretext_losses
from gssl_fast.model.task import GSSLTask, build_task, gssl_scalars
from pipelines.errors import UserError
from pipelines.localizable import TASKS, draw_localizable

ALL = tuple(TASKS)


class TinyBackbone(nn.Module):
    """Conv + global pool: the timm ``num_classes=0`` contract, [B, 3, H, W] -> [B, D]."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 3, padding=1)
        self.num_features = dim

    def forward(self, x):
        return F.relu(self.conv(x)).mean(dim=(2, 3))


def _batch(b=6, tasks=ALL, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, 8, 8, generator=g)
    labels = torch.randint(5, (b,), generator=g)
    params = draw_localizable(b, tasks=tasks, generator=g)
    targets = {k: v for k, v in params.items() if k.startswith("target_")}
    return images, labels, targets


@pytest.mark.parametrize("tasks", [ALL, ("rotation",), ()])
def test_forward_keys_and_shapes(tasks):
    torch.manual_seed(0)
    task = GSSLTask(TinyBackbone(), 5, tasks)
    images, labels, targets = _batch(tasks=tasks)
    out = task(images, labels, targets)
    assert out["features"].shape == (6, 8)
    assert out["logits"].shape == (6, 5)
    assert set(out["pretext_logits"]) == set(tasks)
    for t in tasks:
        assert out["pretext_logits"][t].shape == (6, TASKS[t])
        assert out[f"loss_{t}"].dim() == 0
    assert out["loss_cls"].dim() == 0
    if tasks:
        assert out["gate"].shape == (len(tasks),) and not out["gate"].requires_grad
        assert out["gate"].sum().item() == pytest.approx(1.0, rel=1e-6)
        torch.testing.assert_close(out["loss"], out["loss_cls"] + 0.1 * out["loss_ssl"])
    else:
        assert "loss_ssl" not in out and "gate" not in out and "gate_logits" not in out
        assert out["loss"] is out["loss_cls"]


def test_evaluation_forward_has_no_losses():
    task = GSSLTask(TinyBackbone(), 5, ALL)
    out = task(torch.randn(2, 3, 8, 8))
    assert not any(k.startswith("loss") for k in out)
    assert out["logits"].shape == (2, 5)


def test_unlabeled_forward_is_lambda_times_ssl():
    task = GSSLTask(TinyBackbone(), 5, ALL, lam=0.3)
    images, _, targets = _batch()
    out = task(images, targets=targets)
    assert "loss_cls" not in out
    torch.testing.assert_close(out["loss"], 0.3 * out["loss_ssl"])


@pytest.mark.parametrize("gate", ["reference", "learned"])
@pytest.mark.parametrize("combine", ["gated", "sum", "mean"])
def test_losses_match_explicit_computation(gate, combine):
    torch.manual_seed(1)
    task = GSSLTask(TinyBackbone(), 5, ALL, gate=gate, combine=combine, lam=0.25)
    images, labels, targets = _batch(seed=2)
    out = task(images, labels, targets)
    per_sample = torch.stack(
        [F.cross_entropy(out["pretext_logits"][t], targets[f"target_{t}"], reduction="none") for t in ALL]
    )
    for t, losses in zip(ALL, per_sample):
        torch.testing.assert_close(out[f"loss_{t}"], losses.mean())
    ssl, gate_values = combine_pretext_losses(per_sample, out["gate_logits"], gate=gate, combine=combine)
    torch.testing.assert_close(out["loss_ssl"], ssl)
    torch.testing.assert_close(out["gate"], gate_values)
    torch.testing.assert_close(out["loss_cls"], F.cross_entropy(out["logits"], labels))
    torch.testing.assert_close(out["loss"], out["loss_cls"] + 0.25 * ssl)


@pytest.mark.parametrize("gate,combine,gate_trains", [
    ("reference", "gated", False),
    ("learned", "gated", True),
    ("learned", "sum", False),
])
def test_backward_reaches_backbone_heads_and_gate(gate, combine, gate_trains):
    torch.manual_seed(0)
    task = GSSLTask(TinyBackbone(), 5, ALL, gate=gate, combine=combine)
    images, labels, targets = _batch()
    task(images, labels, targets)["loss"].backward()
    assert task.backbone.conv.weight.grad is not None
    assert task.backbone.conv.weight.grad.abs().sum() > 0
    for head in [task.heads.classifier, *task.heads.pretext.values()]:
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    if gate_trains:
        assert task.heads.gate.weight.grad is not None
        assert task.heads.gate.weight.grad.abs().sum() > 0
    else:
        assert task.heads.gate.weight.grad is None
        assert not task.heads.gate.weight.requires_grad


def test_reference_gate_adds_no_gradient_to_backbone():
    """The detached gate is a constant: backbone gradients equal those of the fixed-weight sum."""
    torch.manual_seed(0)
    task = GSSLTask(TinyBackbone(), 5, ALL, gate="reference")
    images, labels, targets = _batch()
    out = task(images, labels, targets)
    out["loss"].backward()
    grad = task.backbone.conv.weight.grad.clone()
    task.zero_grad()
    out = task(images, labels, targets)
    fixed = sum(out["gate"][i] * out[f"loss_{t}"] for i, t in enumerate(ALL))  # values only
    per_task = [F.cross_entropy(out["pretext_logits"][t], targets[f"target_{t}"]) for t in ALL]
    manual = out["loss_cls"] + 0.1 * sum(out["gate"][i] * per_task[i] for i in range(3))
    torch.testing.assert_close(manual, out["loss"])
    torch.testing.assert_close(fixed, out["loss_ssl"].detach())
    manual.backward()
    torch.testing.assert_close(task.backbone.conv.weight.grad, grad)


def test_ldam_task_uses_normed_heads_and_scaled_pretext_logits():
    torch.manual_seed(0)
    counts = [50, 20, 10, 5, 2]
    class_loss = build_class_loss(LossConfig(name="ldam"), counts)
    task = GSSLTask(TinyBackbone(), 5, ALL, class_loss=class_loss, normed_heads=True, pretext_scale=30.0)
    assert all(isinstance(m, NormedLinear) for m in [task.heads.classifier, *task.heads.pretext.values()])
    assert isinstance(task.heads.gate, nn.Linear)
    images, labels, targets = _batch()
    out = task(images, labels, targets)
    torch.testing.assert_close(out["loss_cls"], LDAMLoss(counts)(out["logits"], labels))
    expected = F.cross_entropy(30.0 * out["pretext_logits"]["rotation"], targets["target_rotation"])
    torch.testing.assert_close(out["loss_rotation"], expected)


def test_missing_target_and_bad_settings():
    task = GSSLTask(TinyBackbone(), 5, ("rotation", "perm"))
    images, labels, targets = _batch(tasks=("rotation",))
    with pytest.raises(KeyError, match="target_perm"):
        task(images, labels, targets)
    with pytest.raises(UserError, match="pretext.gate"):
        GSSLTask(TinyBackbone(), 5, ALL, gate="hard")
    with pytest.raises(UserError, match="pretext.combine"):
        GSSLTask(TinyBackbone(), 5, ALL, combine="max")
    with pytest.raises(UserError, match="lambda"):
        GSSLTask(TinyBackbone(), 5, ALL, lam=-1.0)


def test_gssl_scalars_name_every_logged_value():
    task = GSSLTask(TinyBackbone(), 5, ("rotation", "flip"))
    images, labels, targets = _batch(b=9, tasks=("rotation", "flip"))
    out = task(images, labels, targets)
    row = gssl_scalars(out, targets, task.tasks)
    assert set(row) == {"loss_cls", "loss_ssl", "loss_rotation", "loss_flip", "gate/rotation", "gate/flip",
                        "pretext_acc/rotation", "pretext_acc/flip"}
    assert all(v.dim() == 0 and not v.requires_grad for v in row.values())
    for t in task.tasks:
        hits = sum(int(out["pretext_logits"][t][i].argmax() == targets[f"target_{t}"][i]) for i in range(9))
        assert row[f"pretext_acc/{t}"].item() == pytest.approx(100.0 * hits / 9)
    assert row["gate/rotation"].item() + row["gate/flip"].item() == pytest.approx(1.0)


def test_timm_backbone():
    torch.manual_seed(0)
    backbone = timm.create_model("resnet10t", num_classes=0)
    task = GSSLTask(backbone, 5, ALL, gate="learned")
    images, labels, targets = _batch(b=2)
    out = task(images.repeat(1, 1, 2, 2), labels, targets)
    assert out["features"].shape == (2, backbone.num_features)
    out["loss"].backward()
    assert task.heads.gate.weight.grad is not None


NORM = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_build_task(monkeypatch):
    """build_task wires the recipe sections; models.py is stood in by a fake build_backbone."""
    seen = []

    def build_backbone(cfg):
        seen.append(cfg)
        return TinyBackbone(4)

    fake = types.SimpleNamespace(build_backbone=build_backbone, InputNormalize=lambda *a, **k: nn.Identity(),
                                 initialize=lambda module, name: module)
    monkeypatch.setitem(sys.modules, "gssl_fast.model.network", fake)
    model_cfg = ModelConfig(backbone="tiny")
    pretext_cfg = PretextConfig(tasks=("flip", "rotation"), gate="learned", combine="sum", lam=0.3)
    task = build_task(model_cfg, pretext_cfg, LossConfig(name="ldam", ldam_scale=16.0, drw=True, pretext_scale=16.0),
                      num_classes=3, class_counts=[9, 4, 1], **NORM)
    assert seen == [model_cfg]
    assert task.tasks == ("rotation", "flip")
    assert (task.gate_mode, task.combine, task.lam, task.pretext_scale) == ("learned", "sum", 0.3, 16.0)
    assert isinstance(task.heads.classifier, NormedLinear)
    assert isinstance(task.class_loss.criterion, LDAMLoss) and task.class_loss.drw is not None

    plain = build_task(model_cfg, PretextConfig(tasks=()), LossConfig(), num_classes=3, class_counts=[1, 1, 1], **NORM)
    assert isinstance(plain.heads.classifier, nn.Linear) and plain.pretext_scale == 1.0
    with pytest.raises(UserError, match="loss.name"):
        build_task(model_cfg, pretext_cfg, LossConfig(name="focal"), num_classes=3, class_counts=[1, 1, 1], **NORM)
    with pytest.raises(ValueError, match="class_counts"):
        build_task(model_cfg, pretext_cfg, LossConfig(), num_classes=4, class_counts=[1, 1, 1], **NORM)


def test_build_task_with_project_backbone():
    task = build_task(ModelConfig(backbone="resnet8_cifar"), PretextConfig(), LossConfig(name="ldam", drw=True),
                      num_classes=5, class_counts=[40, 20, 10, 5, 2], **NORM)
    images, labels, targets = _batch(b=4)
    out = task(images.repeat(1, 1, 4, 4), labels, targets)  # 32x32 CIFAR-sized
    assert out["features"].shape == (4, task.backbone.num_features)
    out["loss"].backward()
    assert all(p.grad is not None for n, p in task.named_parameters() if not n.startswith("heads.gate."))


def test_ldam_pretext_loss_is_the_ce_of_raw_cosines():
    """The authors' LT code: the class logits are scaled by s, the pretext heads' cosines
    enter their cross-entropy unscaled (loss.pretext_scale = 1, the default)."""
    torch.manual_seed(0)
    task = build_task(ModelConfig(backbone="resnet8_cifar"), PretextConfig(), LossConfig(name="ldam"),
                      num_classes=5, class_counts=[40, 20, 10, 5, 2], **NORM)
    images, labels, targets = _batch(b=6)
    out = task(images.repeat(1, 1, 4, 4), labels, targets)
    for t in task.tasks:
        cosines = out["pretext_logits"][t]
        assert cosines.abs().max() <= 1 + 1e-5  # NormedLinear: cosines
        expect = F.cross_entropy(cosines.float(), targets[f"target_{t}"])
        assert out[f"loss_{t}"].item() == pytest.approx(expect.item(), rel=1e-6)
    scaled = build_task(ModelConfig(backbone="resnet8_cifar"), PretextConfig(),
                        LossConfig(name="ldam", pretext_scale=30.0), num_classes=5,
                        class_counts=[40, 20, 10, 5, 2], **NORM)
    assert scaled.pretext_scale == 30.0


def test_kaiming_init_is_the_authors_weights_init():
    """model.init = "kaiming": kaiming_normal_ (fan_in, gain sqrt(2)) on every nn.Linear and
    nn.Conv2d weight, gate included, in module order; cosine heads keep their own."""
    args = (PretextConfig(), LossConfig(name="ldam"))
    kw = dict(num_classes=5, class_counts=[40, 20, 10, 5, 2], **NORM)
    torch.manual_seed(3)
    task = build_task(ModelConfig(backbone="resnet8_cifar", init="kaiming"), *args, **kw)
    torch.manual_seed(3)
    expect = build_task(ModelConfig(backbone="resnet8_cifar"), *args, **kw)
    touched = 0
    for m in expect.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight)
            touched += 1
    assert touched > 3 and isinstance(task.heads.gate, nn.Linear)
    for (name, a), b in zip(task.state_dict().items(), expect.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(task.heads.classifier.weight, expect.heads.classifier.weight)  # NormedLinear untouched


def test_detached_gate_gives_the_same_loss_and_no_gate_gradient():
    torch.manual_seed(0)
    task = GSSLTask(TinyBackbone(), 5, ALL, gate="learned")
    images, labels, targets = _batch(b=6)
    free = task(images, labels, targets)
    fixed = task(images, labels, targets, detach_gate=True)
    assert torch.allclose(free["loss"], fixed["loss"])
    fixed["loss"].backward()
    assert task.heads.gate.weight.grad is None or not task.heads.gate.weight.grad.any()
    free["loss"].backward()
    assert task.heads.gate.weight.grad.abs().sum() > 0
