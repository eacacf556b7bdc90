"""Contrastive pieces of the SimCLR / G-SimCLR trainer (docs/method.md section 4).

- ``nt_xent``: SimCLR's NT-Xent loss over the 2B views of a batch, optionally with the
  negatives of every process (``gather=True``).
- ``gather_with_grad``: all-gather across ``torch.distributed`` processes that keeps the
  gradient flowing back to each process's own shard.
- ``knn_accuracy``: the weighted kNN monitor of InstDisc / solo-learn.

Gradient convention with ``gather=True`` (the usual one, SimCLR's TPU code, solo-learn's
``GatherLayer``). Let ``L`` be the single-process loss of the global batch (all
``world * B`` images, mean over all ``2 * world * B`` rows) and ``L_p`` the loss process
``p`` returns (mean over its local ``2B`` rows against all views). Then

- ``mean_p L_p == L``: every row is owned by exactly one process and all shards have the
  same ``B``;
- the backward of the gather sums (all-reduces) the gradient of every process's loss with
  respect to the gathered copies and hands each process its own slice, so the local
  ``z.grad`` of process ``p`` is ``d(sum_q L_q) / dz_p = world * dL / dz_p``;
- DDP averages parameter gradients over processes, which divides that ``world`` out:
  every process ends with ``dL / dtheta``, the single-process gradient of the global
  batch. Do not rescale the loss by ``world`` on top of DDP's averaging.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["gather_with_grad", "knn_accuracy", "nt_xent"]


def _world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """Forward: ``all_gather`` of equal-shaped shards, concatenated along dim 0.
    Backward: the gradient summed over processes (``all_reduce``), this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, world = _world()
        ctx.rank, ctx.rows = rank, x.shape[0]
        x = x.contiguous()
        shards = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(shards, x)
        return torch.cat(shards, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gathers ``tensor [B, ...]`` from every process into ``[world * B, ...]`` (rank
    order, same dtype and device), differentiable with respect to the local shard.

    Every process must call it with the same shape (the same ``B``) and must later run
    backward through it (the backward is a collective). The gradient the local shard gets
    is the sum over processes of their losses' gradients for that slice (see the module
    docstring for how this meets DDP's averaging). Without a process group, or with one
    process, it returns ``tensor`` itself.
    """
    if _world()[1] == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, *, gather: bool = False) -> torch.Tensor:
    """SimCLR's normalized temperature-scaled cross-entropy (Chen et al. 2020, eq. 1).

    "We randomly sample a minibatch of N examples and define the contrastive prediction task
    on pairs of augmented examples derived from the minibatch, resulting in 2N data points.
    [...] we treat the other 2(N - 1) augmented examples within a minibatch as negative
    examples." ``l(i, j) = -log exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau)``,
    averaged over all 2N rows (both orders of every pair).

    ``z1, z2``: ``[B, D]`` float projections of the two views of the same ``B`` images
    (row ``i`` of each is image ``i``), not normalized; any float dtype. Computed in at
    least float32 (half and bfloat16 are upcast, float64 stays float64). Returns a scalar
    of that dtype.

    ``gather=True`` (under ``torch.distributed``): the negatives are the views of every
    process; this process's ``2B`` rows are scored against all ``2 * world * B`` views
    and averaged, so the mean over processes equals the loss of the global batch (see the
    module docstring for the gradient convention). It is a no-op with one process.
    """
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"nt_xent needs z1 and z2 of the same shape [B, D], got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"nt_xent needs temperature > 0, got {temperature}")
    dtype = torch.promote_types(z1.dtype, torch.float32)
    q1 = F.normalize(z1.to(dtype), dim=1)
    q2 = F.normalize(z2.to(dtype), dim=1)
    rank, world = _world() if gather else (0, 1)
    k1, k2 = (gather_with_grad(q1), gather_with_grad(q2)) if world > 1 else (q1, q2)
    b, n = q1.shape[0], k1.shape[0]  # local and global batch
    queries = torch.cat([q1, q2])  # [2B, D]
    keys = torch.cat([k1, k2])  # [2N, D]: all first views, then all second views
    logits = queries @ keys.T / temperature  # [2B, 2N]
    local = torch.arange(b, device=q1.device) + rank * b  # global image index of local rows
    own = torch.cat([local, local + n])  # column of each row's own view
    positive = torch.cat([local + n, local])  # column of its other view
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(2 * b, device=q1.device), own] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, positive)


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int,
    chunk_size: int = 256,
) -> float:
    """Top-1 accuracy in percent of the weighted kNN classifier (Wu et al. 2018, InstDisc;
    solo-learn's ``WeightedKNNClassifier``).

    "The top k nearest neighbours ... are used to make the prediction via weighted voting.
    ... the class weight w_c = sum_i exp(s_i / tau) * 1(c_i = c)."

    ``train_features [N, D]`` and ``test_features [M, D]``: any float dtype and device
    (computed in float32 on ``train_features``' device, L2-normalized here);
    ``train_labels [N]``, ``test_labels [M]``: int class ids in ``[0, num_classes)``.
    The ``min(k, N)`` most cosine-similar training features vote with ``exp(sim / T)``;
    ties between classes go to the lowest class id. The weights are scaled per test row by
    ``exp(-max sim / T)``, which changes no vote but keeps small ``T`` from overflowing. Test features are processed
    ``chunk_size`` at a time, so memory is ``O(chunk_size * N)``.
    """
    if train_features.dim() != 2 or test_features.dim() != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"knn_accuracy needs features [N, D] and [M, D], "
            f"got {tuple(train_features.shape)} and {tuple(test_features.shape)}"
        )
    if train_labels.shape != train_features.shape[:1] or test_labels.shape != test_features.shape[:1]:
        raise ValueError("knn_accuracy needs one label per feature row")
    if k < 1 or not temperature > 0 or chunk_size < 1 or train_features.shape[0] == 0:
        raise ValueError(
            "knn_accuracy needs k >= 1, temperature > 0, chunk_size >= 1 and training features "
            f"(k={k}, temperature={temperature}, chunk_size={chunk_size}, N={train_features.shape[0]})"
        )
    if test_features.shape[0] == 0:
        raise ValueError("knn_accuracy needs at least one test feature")
    device = train_features.device
    train = F.normalize(train_features.float(), dim=1)
    train_labels = train_labels.to(device=device, dtype=torch.long)
    test_labels = test_labels.to(device=device, dtype=torch.long)
    k = min(k, train.shape[0])
    correct = 0
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].to(device=device, dtype=torch.float32), dim=1)
        sim, idx = (test @ train.T).topk(k, dim=1)  # [C, k]
        votes = torch.zeros(test.shape[0], num_classes, device=device)
        weights = ((sim - sim[:, :1]) / temperature).exp()  # exp(sim / T) up to a per-row factor
        votes.scatter_add_(1, train_labels[idx], weights)
        correct += int((votes.argmax(dim=1) == test_labels[start : start + chunk_size]).sum())
    return 100.0 * correct / test_features.shape[0]
