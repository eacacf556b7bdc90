import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gssl_fast.methods.simclr.losses import gather_with_grad, knn_accuracy, nt_xent


def _nt_xent_reference(z1, z2, tau):
    """Pair by pair from SimCLR's eq. 1: one exp per pair, one log per row, mean over 2B rows."""
    views = [v / v.norm() for v in list(z1) + list(z2)]
    n, b = len(views), len(views) // 2
    total = 0.0
    for i in range(n):
        pos = (i + b) % n
        denominator = sum(torch.exp(views[i].dot(views[j]) / tau) for j in range(n) if j != i)
        total = total - torch.log(torch.exp(views[i].dot(views[pos]) / tau) / denominator)
    return total / n


def _views(b, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=dtype), torch.randn(b, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("b, d, tau", [(1, 3, 0.1), (2, 4, 0.5), (5, 8, 0.1), (8, 3, 0.05), (16, 32, 1.0)])
def test_nt_xent_matches_reference(b, d, tau):
    z1, z2 = _views(b, d, seed=b * 100 + d)
    z1 = 3.0 * z1  # unnormalized on purpose
    loss = nt_xent(z1, z2, tau)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    expected = _nt_xent_reference(z1.double(), z2.double(), tau)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


def test_nt_xent_hand_values():
    # One image: the only other view is the positive, so the loss is -log 1 = 0.
    assert nt_xent(torch.tensor([[1.0, 2.0]]), torch.tensor([[-3.0, 0.5]])).item() == pytest.approx(0.0, abs=1e-6)
    # Two orthogonal images, identical views: each row has the positive at sim 1 and two
    # negatives at sim 0, so every row's loss is log(1 + 2 exp(-1 / tau)).
    # float64 in, float64 out: at tau = 0.1 the loss is ~9e-5, below float32's resolution of log-sum-exp.
    z = torch.tensor([[2.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    for tau in (0.1, 0.5, 1.0):
        expected = math.log(1 + 2 * math.exp(-1 / tau))
        assert nt_xent(z, z.clone(), tau).item() == pytest.approx(expected, rel=1e-12)
        assert nt_xent(z.float(), z.float(), tau).item() == pytest.approx(expected, abs=1e-6)


def test_nt_xent_gradients_match_reference():
    z1, z2 = _views(3, 4, seed=7, dtype=torch.float64)
    z1.requires_grad_(), z2.requires_grad_()
    fast = torch.autograd.grad(nt_xent(z1, z2, 0.2), (z1, z2))
    slow = torch.autograd.grad(_nt_xent_reference(z1, z2, 0.2), (z1, z2))
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.2), (z1, z2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nt_xent_computes_low_precision_in_float32(dtype):
    z1, z2 = (z.to(dtype) for z in _views(6, 8, seed=3))
    loss = nt_xent(z1, z2, 0.05)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(nt_xent(z1.float(), z2.float(), 0.05).item(), rel=1e-6)


def test_nt_xent_rejects_bad_inputs():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(z, torch.randn(5, 3))
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(z[0], z[0])
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z, z, 0.0)


def test_gather_is_the_identity_without_process_group():
    z1, z2 = _views(4, 3, seed=1)
    assert gather_with_grad(z1) is z1
    assert nt_xent(z1, z2, 0.1, gather=True).item() == nt_xent(z1, z2, 0.1).item()


WORLD, LOCAL_B, DIM, IN_DIM, TAU = 2, 3, 5, 4, 0.2


def _global_problem():
    """float64 global batch: projections z1, z2 [WORLD * LOCAL_B, DIM], inputs x1, x2
    [WORLD * LOCAL_B, IN_DIM] and a linear projector's weight [DIM, IN_DIM]."""
    g = torch.Generator().manual_seed(0)
    n = WORLD * LOCAL_B
    return {name: torch.randn(*shape, generator=g, dtype=torch.float64)
            for name, shape in [("z1", (n, DIM)), ("z2", (n, DIM)), ("x1", (n, IN_DIM)), ("x2", (n, IN_DIM)),
                                ("weight", (DIM, IN_DIM))]}


def _projector(weight):
    model = nn.Linear(IN_DIM, DIM, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(weight)
    return model


def _shard_worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        p = _global_problem()
        local = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        z1, z2 = p["z1"][local].clone().requires_grad_(), p["z2"][local].clone().requires_grad_()
        loss = nt_xent(z1, z2, TAU, gather=True)
        loss.backward()
        model = DistributedDataParallel(_projector(p["weight"]))
        h1, h2 = model(torch.cat([p["x1"][local], p["x2"][local]])).chunk(2)
        model_loss = nt_xent(h1, h2, TAU, gather=True)
        model_loss.backward()
        torch.save({"loss": loss.detach(), "z1_grad": z1.grad, "z2_grad": z2.grad,
                    "model_loss": model_loss.detach(), "weight_grad": model.module.weight.grad},
                   f"{out_dir}/rank{rank}.pt")
        # Both ranks done with the group before either tears it down: gloo aborts a rank
        # ("terminate called without an active exception") whose peer left mid-exchange.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_the_global_batch(tmp_path):
    """Mean over processes of the loss = single-process loss of the global batch; each
    shard's z.grad / WORLD = the single-process gradient of its rows; DDP-averaged
    parameter gradients = the single-process parameter gradient."""
    mp.spawn(_shard_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    p = _global_problem()
    z1, z2 = p["z1"].clone().requires_grad_(), p["z2"].clone().requires_grad_()
    loss = nt_xent(z1, z2, TAU)
    loss.backward()
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), loss.detach())
    torch.testing.assert_close(torch.cat([r["z1_grad"] for r in ranks]) / WORLD, z1.grad)
    torch.testing.assert_close(torch.cat([r["z2_grad"] for r in ranks]) / WORLD, z2.grad)
    # The cross-process terms matter: without the gather the loss would differ.
    assert not torch.allclose(ranks[0]["loss"], nt_xent(p["z1"][:LOCAL_B], p["z2"][:LOCAL_B], TAU))

    model = _projector(p["weight"])
    h1, h2 = model(torch.cat([p["x1"], p["x2"]])).chunk(2)
    model_loss = nt_xent(h1, h2, TAU)
    model_loss.backward()
    torch.testing.assert_close(torch.stack([r["model_loss"] for r in ranks]).mean(), model_loss.detach())
    for r in ranks:
        torch.testing.assert_close(r["weight_grad"], model.weight.grad)


def _knn_reference(train_x, train_y, test_x, test_y, k, tau, num_classes):
    """Per test point: cosine to every training point, the k best vote exp(sim / tau)."""
    correct = 0
    for x, y in zip(test_x.tolist(), test_y.tolist()):
        sims = []
        for t, c in zip(train_x.tolist(), train_y.tolist()):
            dot = sum(a * b for a, b in zip(x, t))
            sims.append((dot / (math.sqrt(sum(a * a for a in x)) * math.sqrt(sum(b * b for b in t))), c))
        votes = [0.0] * num_classes
        for s, c in sorted(sims, reverse=True)[:k]:
            votes[c] += math.exp(s / tau)
        correct += votes.index(max(votes)) == y
    return 100.0 * correct / len(test_y)


def test_knn_separable_clusters_are_perfect():
    g = torch.Generator().manual_seed(0)
    centres = 10.0 * torch.eye(4, 6)
    train_y, test_y = torch.arange(4).repeat(10), torch.arange(4).repeat_interleave(3)
    train_x = centres[train_y] + torch.randn(40, 6, generator=g)
    test_x = centres[test_y] + torch.randn(12, 6, generator=g)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=5, num_classes=4) == 100.0
    assert knn_accuracy(train_x, train_y, test_x, (test_y + 1) % 4, k=5, num_classes=4) == 0.0


def test_knn_hand_case_temperature_decides():
    # Test point (1, 0), label 0. Neighbours: (1, 0) label 0 at sim 1; (0.6, +-0.8) label 1
    # at sim 0.6. Class 0 gets exp(1/T), class 1 gets 2 exp(0.6/T): class 0 wins iff
    # T < 0.4 / ln 2 = 0.577.
    train_x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])
    train_y = torch.tensor([0, 1, 1, 0])
    test_x, test_y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    kw = dict(num_classes=2)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=3, temperature=0.07, **kw) == 100.0
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=3, temperature=0.5, **kw) == 100.0
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=3, temperature=0.7, **kw) == 0.0
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=1, temperature=100.0, **kw) == 100.0
    # k larger than the training set: all four vote, class 0 adds exp(-1/T).
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=50, temperature=0.7, **kw) == 0.0
    # Tiny T would overflow exp(sim / T) in float32; the votes stay finite and class 0 wins.
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=3, temperature=0.005, **kw) == 100.0


@pytest.mark.parametrize("k, tau, chunk_size", [(1, 0.07, 256), (5, 0.07, 7), (20, 0.1, 1), (20, 1.0, 64)])
def test_knn_matches_reference(k, tau, chunk_size):
    g = torch.Generator().manual_seed(k)
    num_classes = 5
    centres = 1.5 * torch.randn(num_classes, 8, generator=g)
    train_y = torch.randint(num_classes, (120,), generator=g)
    test_y = torch.randint(num_classes, (50,), generator=g)
    train_x = centres[train_y] + torch.randn(120, 8, generator=g)
    test_x = centres[test_y] + torch.randn(50, 8, generator=g)
    got = knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=tau, num_classes=num_classes,
                       chunk_size=chunk_size)
    assert got == pytest.approx(_knn_reference(train_x, train_y, test_x, test_y, k, tau, num_classes))
    assert 20.0 < got < 100.0  # neither trivial nor perfect, so the comparison means something
    half = knn_accuracy(train_x.half(), train_y, test_x.half(), test_y, k=k, temperature=tau,
                        num_classes=num_classes, chunk_size=chunk_size)
    assert abs(half - got) <= 4.0  # fp16 rounding may flip a near-tie or two


def test_knn_rejects_bad_inputs():
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="features"):
        knn_accuracy(x, y, torch.randn(2, 5), y[:2], num_classes=2)
    with pytest.raises(ValueError, match="label"):
        knn_accuracy(x, y[:3], x, y, num_classes=2)
    with pytest.raises(ValueError, match="k >= 1"):
        knn_accuracy(x, y, x, y, k=0, num_classes=2)
