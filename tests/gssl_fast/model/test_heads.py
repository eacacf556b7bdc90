import pytest
import torch
from torch import nn

from gssl_fast.model.heads import GatedMultiHead, NormedLinear
from pipelines.errors import UserError
from pipelines.localizable import TASKS


def test_normed_linear_is_cosine_in_unit_range():
    torch.manual_seed(0)
    layer = NormedLinear(12, 5)
    assert torch.allclose(layer.weight.norm(dim=1), torch.ones(5), atol=1e-6)
    x = torch.randn(64, 12) * 50
    y = layer(x)
    assert y.shape == (64, 5)
    assert y.abs().max() <= 1.0 + 1e-6
    expected = torch.stack([torch.cosine_similarity(x, w[None], dim=1) for w in layer.weight], dim=1)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    # Scaling the input or a weight row leaves cosine logits unchanged.
    with torch.no_grad():
        layer.weight[2] *= 7.0
    torch.testing.assert_close(layer(3 * x), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tasks", [("perm", "rotation", "flip"), ("rotation",), ("flip", "perm"), ()])
@pytest.mark.parametrize("normed", [False, True])
def test_gated_multi_head_shapes(tasks, normed):
    head = GatedMultiHead(8, 10, tasks, normed=normed)
    canonical = tuple(t for t in TASKS if t in tasks)
    assert head.tasks == canonical
    assert tuple(head.pretext.keys()) == canonical
    out = head(torch.randn(4, 8))
    assert out["logits"].shape == (4, 10)
    assert list(out["pretext_logits"]) == list(canonical)
    for t in canonical:
        assert out["pretext_logits"][t].shape == (4, TASKS[t])
    if canonical:
        assert isinstance(head.gate, nn.Linear)
        assert out["gate_logits"].shape == (4, len(canonical))
    else:
        assert head.gate is None and "gate_logits" not in out
    layer = NormedLinear if normed else nn.Linear
    assert all(isinstance(m, layer) for m in [head.classifier, *head.pretext.values()])


def test_gated_multi_head_rejects_unknown_task():
    with pytest.raises(UserError, match="rotation"):
        GatedMultiHead(8, 10, ("rotation", "jigsaw"))


def test_normed_linear_stays_float32_under_autocast():
    torch.manual_seed(0)
    layer = NormedLinear(16, 4)
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
        plain = nn.functional.linear(x, layer.weight)  # a normal layer drops to bf16
    assert plain.dtype == torch.bfloat16
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, layer(x.bfloat16().float()))
