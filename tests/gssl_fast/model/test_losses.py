import math

import pytest
import torch

from gssl_fast.config import LossConfig
from gssl_fast.model.losses import (
    COMBINE_MODES,
    GATE_MODES,
    ClassLoss,
    LDAMLoss,
    build_class_loss,
    combine_pretext_losses,
    cross_entropy,
    drw_weights,
)
from pipelines.errors import UserError

COUNTS = [500, 200, 80, 30, 5]


def _ldam_reference(logits, target, counts, max_margin, scale, weight=None):
    """Per-sample loop straight from the LDAM definition."""
    raw = [n ** -0.25 for n in counts]
    margins = [m * max_margin / max(raw) for m in raw]
    losses, weights = [], []
    for i in range(logits.shape[0]):
        y = int(target[i])
        z = [scale * float(v) for v in logits[i]]
        z[y] -= scale * margins[y]
        log_norm = math.log(sum(math.exp(v) for v in z))
        w = 1.0 if weight is None else float(weight[y])
        losses.append(w * (log_norm - z[y]))
        weights.append(w)
    return losses, sum(losses) / sum(weights)


def test_ldam_margins():
    loss = LDAMLoss(COUNTS, max_margin=0.4)
    m = loss.margins
    assert m.dtype == torch.float32
    assert m.max().item() == pytest.approx(0.4)
    assert m.argmax().item() == COUNTS.index(min(COUNTS))
    # Fewer images, larger margin.
    assert torch.all(m[1:] > m[:-1])
    ratio = (COUNTS[0] / COUNTS[3]) ** 0.25
    assert (m[3] / m[0]).item() == pytest.approx(ratio, rel=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_ldam_matches_reference(weighted):
    g = torch.Generator().manual_seed(1)
    logits = torch.rand(16, 5, generator=g) * 2 - 1
    target = torch.randint(5, (16,), generator=g)
    weight = torch.rand(5, generator=g) + 0.5 if weighted else None
    per_sample, mean = _ldam_reference(logits, target, COUNTS, 0.5, 30.0, weight)

    got_mean = LDAMLoss(COUNTS)(logits, target, weight)
    assert got_mean.item() == pytest.approx(mean, rel=1e-5)
    got = LDAMLoss(COUNTS, reduction="none")(logits, target, weight)
    assert got.shape == (16,)
    torch.testing.assert_close(got, torch.tensor(per_sample, dtype=torch.float32), rtol=1e-5, atol=1e-5)


def test_ldam_zero_margin_is_scaled_ce():
    logits = torch.randn(8, 5, requires_grad=True)
    target = torch.arange(8) % 5
    loss = LDAMLoss(COUNTS, max_margin=0.0, scale=2.0)(logits, target)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(2 * logits, target))
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_ldam_rejects_empty_class():
    with pytest.raises(UserError, match="classes \\[2\\]"):
        LDAMLoss([10, 3, 0])


def test_drw_weights():
    w = drw_weights(COUNTS, beta=0.999)
    assert w.dtype == torch.float32 and w.shape == (5,)
    assert w.sum().item() == pytest.approx(5.0, rel=1e-6)
    assert torch.all(w[1:] > w[:-1])  # rare classes weigh more
    effective = [(1 - 0.999**n) / (1 - 0.999) for n in COUNTS]
    expected = torch.tensor([1 / e for e in effective], dtype=torch.float64)
    torch.testing.assert_close(w, (expected * 5 / expected.sum()).float())
    torch.testing.assert_close(drw_weights(COUNTS, beta=0.0), torch.ones(5))
    with pytest.raises(UserError, match="drw_beta"):
        drw_weights(COUNTS, beta=1.0)


def test_build_class_loss_and_drw_schedule():
    cfg = LossConfig(name="ldam", drw=True, drw_start_epoch=3, drw_beta=0.999)
    loss = build_class_loss(cfg, COUNTS)
    assert isinstance(loss.criterion, LDAMLoss)
    logits = torch.rand(10, 5) * 2 - 1
    target = torch.arange(10) % 5
    plain = loss(logits, target)
    assert plain.item() == pytest.approx(LDAMLoss(COUNTS)(logits, target).item(), rel=1e-6)
    loss.set_epoch(2)
    assert torch.equal(loss.weight, torch.ones(5))
    loss.set_epoch(3)
    torch.testing.assert_close(loss.weight, drw_weights(COUNTS, 0.999))
    weighted = LDAMLoss(COUNTS)(logits, target, drw_weights(COUNTS, 0.999))
    assert loss(logits, target).item() == pytest.approx(weighted.item(), rel=1e-6)
    assert "weight" in loss.state_dict()
    loss.set_weight(None)
    assert torch.equal(loss.weight, torch.ones(5))
    with pytest.raises(ValueError, match="shape"):
        loss.set_weight(torch.ones(4))


def test_build_class_loss_ce_without_drw_ignores_epoch():
    loss = build_class_loss(LossConfig(name="ce"), [3, 3, 3])
    assert loss.criterion is cross_entropy and loss.drw is None
    loss.set_epoch(1000)
    assert torch.equal(loss.weight, torch.ones(3))
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(loss(logits, target), torch.nn.functional.cross_entropy(logits, target))


def test_build_class_loss_unknown_name():
    with pytest.raises(UserError, match="loss.name 'focal'; valid: ce, ldam"):
        build_class_loss(LossConfig(name="focal"), COUNTS)


def _combine_reference(l, gate_logits, gate, combine):
    """Explicit loops over tasks and samples, in float64."""
    t_count, b = l.shape
    l = l.double()
    soft = None if gate_logits is None else torch.softmax(gate_logits.double(), dim=1)
    task_mean = [sum(l[t, i] for i in range(b)) / b for t in range(t_count)]
    if combine == "sum":
        return sum(task_mean)
    if combine == "mean":
        return sum(task_mean) / t_count
    if gate == "reference":
        g = [sum(soft[i, t] for i in range(b)).detach() / b for t in range(t_count)]
        return sum(g[t] * task_mean[t] for t in range(t_count))
    return sum(sum(soft[i, t] * l[t, i] for t in range(t_count)) for i in range(b)) / b


@pytest.mark.parametrize("gate", sorted(GATE_MODES))
@pytest.mark.parametrize("combine", sorted(COMBINE_MODES))
@pytest.mark.parametrize("num_tasks", [1, 3])
def test_combine_matches_loop_reference(gate, combine, num_tasks):
    g = torch.Generator().manual_seed(num_tasks)
    l_ref = (torch.rand(num_tasks, 7, generator=g, dtype=torch.float64) * 3).requires_grad_()
    z_ref = torch.randn(7, num_tasks, generator=g, dtype=torch.float64).requires_grad_()
    l = l_ref.detach().float().requires_grad_()
    z = z_ref.detach().float().requires_grad_()

    loss, gate_values = combine_pretext_losses(l, z, gate=gate, combine=combine)
    expected = _combine_reference(l_ref, z_ref, gate, combine)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(gate_values, torch.softmax(z.detach(), dim=1).mean(0))
    assert not gate_values.requires_grad

    loss.backward()
    expected.backward()
    torch.testing.assert_close(l.grad, l_ref.grad.float(), rtol=1e-5, atol=1e-6)
    if gate == "learned" and combine == "gated":
        torch.testing.assert_close(z.grad, z_ref.grad.float(), rtol=1e-5, atol=1e-6)
        if num_tasks > 1:
            assert z.grad.abs().sum() > 0
    else:
        assert z.grad is None  # the gate receives no gradient


@pytest.mark.parametrize("combine", ["sum", "mean"])
def test_combine_without_gate_logits_reports_uniform(combine):
    l = torch.rand(3, 5)
    loss, gate_values = combine_pretext_losses(l, None, gate="reference", combine=combine)
    torch.testing.assert_close(gate_values, torch.full((3,), 1 / 3))
    expected = l.mean(1).sum() / (3 if combine == "mean" else 1)
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="gate_logits"):
        combine_pretext_losses(l, None, gate="reference", combine="gated")


def test_combine_no_task_and_bad_names():
    loss, gate_values = combine_pretext_losses(torch.zeros(0, 4), None, gate="learned", combine="gated")
    assert loss.item() == 0.0 and gate_values.shape == (0,)
    with pytest.raises(UserError, match="pretext.gate 'soft'; valid: learned, reference"):
        combine_pretext_losses(torch.rand(2, 3), torch.rand(3, 2), gate="soft", combine="gated")
    with pytest.raises(UserError, match="pretext.combine 'max'; valid: gated, mean, sum"):
        combine_pretext_losses(torch.rand(2, 3), torch.rand(3, 2), gate="reference", combine="max")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        combine_pretext_losses(torch.rand(2, 3), torch.rand(2, 3), gate="reference", combine="gated")


def test_class_loss_follows_device_moves():
    loss = ClassLoss(LDAMLoss(COUNTS), 5)
    names = {name for name, _ in loss.named_buffers()}
    assert {"weight", "criterion.margins"} <= names


def test_gate_pools_are_the_authors_two_formulas():
    """probs: mean_i softmax(z_i) (Tiny-ImageNet and adversarial scripts); logits:
    softmax(mean_i z_i) (long-tailed CIFAR scripts). Fixed logits, hand-computed gates."""
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # [B, T]
    per_sample = torch.tensor([[1.0, 5.0], [2.0, 2.0]])  # [T, B]: task means 3 and 2
    e2 = math.exp(2.0)
    probs = [(e2 / (e2 + 1) + 0.5) / 2, (1 / (e2 + 1) + 0.5) / 2]
    e1 = math.exp(1.0)
    pooled = [e1 / (e1 + 1), 1 / (e1 + 1)]
    for pool, g in (("probs", probs), ("logits", pooled)):
        loss, gate = combine_pretext_losses(per_sample, logits, gate="reference", combine="gated", pool=pool)
        assert gate.tolist() == pytest.approx(g)
        assert loss.item() == pytest.approx(3 * g[0] + 2 * g[1])
    with pytest.raises(UserError, match="pretext.gate_pool"):
        combine_pretext_losses(per_sample, logits, gate="reference", combine="gated", pool="median")


def test_an_empty_class_is_named_with_a_fix_for_any_dataset():
    from gssl_fast.model.losses import LDAMLoss
    from pipelines.errors import UserError

    with pytest.raises(UserError, match=r"classes \[1\] have none.*data.imbalance_ratio.*built-in data"):
        LDAMLoss([3, 0])
