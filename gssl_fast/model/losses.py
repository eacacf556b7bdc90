"""Losses: the class loss (CE or LDAM, with DRW weights) and the gated pretext loss.

Class loss, long-tailed recipe (Cao et al. 2019, "Learning Imbalanced Datasets with
Label-Distribution-Aware Margin Loss"): LDAM subtracts a per-class margin
``m_j ~ n_j^(-1/4)`` from the true-class cosine logit; DRW multiplies the loss by the
class-balanced weights of Cui et al. 2019 from a late epoch on.

Pretext loss (docs/method.md section 2, paper eq. 3: ``L_tot = L_C + lambda * sum_n G_n^T L_n``):
per-sample task losses ``l [T, B]`` combined by the gate, or summed / averaged.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gssl_fast.sections import LossConfig
from pipelines.errors import UserError, unknown_name

REDUCTIONS = ("mean", "none")


def _check_counts(class_counts: Sequence[int], what: str) -> torch.Tensor:
    """``[K]`` float64 tensor of the per-class training counts, all >= 1."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"{what} needs a non-empty list of per-class counts, got {list(class_counts)}")
    if bool((counts < 1).any()):
        empty = [j for j, n in enumerate(counts.tolist()) if n < 1]
        raise UserError(
            f"{what} needs at least one training image per class; classes {empty} have none "
            "(raise data.imbalance_ratio, give every class images (data.train_size for the built-in data), "
            "or use loss.name = \"ce\" without loss.drw)"
        )
    return counts


class LDAMLoss(nn.Module):
    """Label-distribution-aware margin loss.

    "We enforce a class-dependent margin m_j = C / n_j^{1/4}" (Cao et al., eq. 10-13):
    ``margins [K]`` float32, scaled so the largest (rarest class) equals ``max_margin``.
    ``forward(logits [B, K] float, target [B] int64, weight [K] | None)``: the true
    class's logit loses its margin, then cross-entropy of ``scale * logits`` (the logits
    are cosines, too small for a softmax unscaled). ``reduction="mean"`` is the
    ``weight``-weighted mean of ``F.cross_entropy`` (the reference code's), ``"none"``
    gives ``[B]`` float32.
    """

    def __init__(
        self,
        class_counts: Sequence[int],
        *,
        max_margin: float = 0.5,
        scale: float = 30.0,
        reduction: str = "mean",
    ):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
        margins = _check_counts(class_counts, "LDAM loss") ** -0.25
        margins = margins * (max_margin / margins.max())
        self.register_buffer("margins", margins.float(), persistent=False)
        self.scale = float(scale)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        margin = self.margins[target]  # [B]
        shifted = logits.scatter_add(1, target[:, None], -margin[:, None])
        return F.cross_entropy(self.scale * shifted, target, weight=weight, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"num_classes={self.margins.numel()}, scale={self.scale}, reduction={self.reduction!r}"


def drw_weights(class_counts: Sequence[int], beta: float = 0.9999) -> torch.Tensor:
    """Class-balanced weights (Cui et al. 2019): ``[K]`` float32 summing to ``K``.

    "The effective number of samples is E_n = (1 - beta^n) / (1 - beta)"; a class
    weighs ``1 / E_n``, so rare classes weigh more. ``beta = 0`` gives all ones.
    """
    if not 0.0 <= beta < 1.0:
        raise UserError(f"loss.drw_beta must be in [0, 1), got {beta}")
    counts = _check_counts(class_counts, "DRW re-weighting")
    weights = (1.0 - beta) / (1.0 - beta**counts)
    return (weights * (counts.numel() / weights.sum())).float()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Plain CE with LDAMLoss's signature; float32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float(), target, weight=weight)


class ClassLoss(nn.Module):
    """Loss of the class head: ``criterion(logits, target, weight)`` with a per-class weight.

    ``weight`` is a ``[K]`` float32 buffer (saved in checkpoints), all ones until DRW
    starts; ones give exactly the unweighted mean. ``set_epoch(epoch)`` switches the
    DRW weights on from ``drw_start_epoch``; ``set_weight`` sets any weights.
    """

    def __init__(
        self,
        criterion: Callable[..., torch.Tensor],
        num_classes: int,
        *,
        drw: torch.Tensor | None = None,
        drw_start_epoch: int = 0,
    ):
        super().__init__()
        self.criterion = criterion  # an nn.Module (LDAM) is registered, so it follows .to()
        self.num_classes = num_classes
        self.register_buffer("weight", torch.ones(num_classes))
        self.register_buffer("drw", None if drw is None else drw.float().clone(), persistent=False)
        self.drw_start_epoch = drw_start_epoch

    def set_weight(self, weight: torch.Tensor | None) -> None:
        """Per-class weights ``[K]``; None restores the unweighted loss."""
        if weight is None:
            self.weight.fill_(1.0)
            return
        if tuple(weight.shape) != (self.num_classes,):
            raise ValueError(f"class weights must have shape [{self.num_classes}], got {tuple(weight.shape)}")
        self.weight.copy_(weight)

    def set_epoch(self, epoch: int) -> None:
        """Call at the start of every epoch (0-based): DRW weights from ``drw_start_epoch``."""
        use_drw = self.drw is not None and epoch >= self.drw_start_epoch
        self.set_weight(self.drw if use_drw else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits ``[B, K]`` float, target ``[B]`` int64 -> scalar float32."""
        return self.criterion(logits, target, self.weight)


def _build_ce(cfg: LossConfig, class_counts: Sequence[int]) -> Callable[..., torch.Tensor]:
    return cross_entropy


def _build_ldam(cfg: LossConfig, class_counts: Sequence[int]) -> Callable[..., torch.Tensor]:
    if cfg.ldam_max_margin <= 0 or cfg.ldam_scale <= 0:
        raise UserError(
            f"loss.ldam_max_margin and loss.ldam_scale must be > 0, got {cfg.ldam_max_margin} and {cfg.ldam_scale}"
        )
    return LDAMLoss(class_counts, max_margin=cfg.ldam_max_margin, scale=cfg.ldam_scale)


CLASS_LOSSES: dict[str, Callable[[LossConfig, Sequence[int]], Callable[..., torch.Tensor]]] = {
    "ce": _build_ce,
    "ldam": _build_ldam,
}


def build_class_loss(cfg: LossConfig, class_counts: Sequence[int]) -> ClassLoss:
    """The ``[loss]`` section as a ClassLoss; ``class_counts[j]`` = training images of class j."""
    if cfg.name not in CLASS_LOSSES:
        raise unknown_name("loss.name", cfg.name, CLASS_LOSSES)
    criterion = CLASS_LOSSES[cfg.name](cfg, class_counts)
    drw = drw_weights(class_counts, cfg.drw_beta) if cfg.drw else None
    return ClassLoss(criterion, len(class_counts), drw=drw, drw_start_epoch=cfg.drw_start_epoch)


# ---------------------------------------------------------------- pretext loss


def _pool_probs(gate_logits: torch.Tensor) -> torch.Tensor:
    # The authors' Tiny-ImageNet and adversarial scripts: the mean of per-sample softmaxes.
    return gate_logits.softmax(dim=1).mean(dim=0)


def _pool_logits(gate_logits: torch.Tensor) -> torch.Tensor:
    # The authors' long-tailed CIFAR scripts: the softmax of the batch-mean logits.
    return gate_logits.mean(dim=0).softmax(dim=0)


# pretext.gate_pool -> [B, T] gate logits -> [T] batch gate
GATE_POOLS = {"probs": _pool_probs, "logits": _pool_logits}


def _batch_gate(gate_logits: torch.Tensor | None, num_tasks: int, like: torch.Tensor, pool: str) -> torch.Tensor:
    """``[T]`` float32 detached: the gate pooled over the batch, uniform without one."""
    if gate_logits is None:
        return torch.full((num_tasks,), 1.0 / num_tasks, device=like.device)
    return GATE_POOLS[pool](gate_logits.detach().float())


def _gate_reference(per_sample: torch.Tensor, gate_logits: torch.Tensor, pool: str) -> tuple[torch.Tensor, torch.Tensor]:
    # The authors' code: one gate vector per batch, a constant for the optimizer.
    g = _batch_gate(gate_logits, per_sample.shape[0], per_sample, pool)
    return (g * per_sample.mean(dim=1)).sum(), g


def _gate_learned(per_sample: torch.Tensor, gate_logits: torch.Tensor, pool: str) -> tuple[torch.Tensor, torch.Tensor]:
    # The paper's text: per-sample gates, trained with the tasks they weigh.
    g = gate_logits.float().softmax(dim=1).t()  # [T, B]
    return (g * per_sample).sum(dim=0).mean(), g.detach().mean(dim=1)


GATE_MODES = {"reference": _gate_reference, "learned": _gate_learned}


def _combine_gated(per_sample, gate_logits, gate, pool):
    if gate_logits is None:
        raise ValueError('combine="gated" needs gate_logits')
    return GATE_MODES[gate](per_sample, gate_logits, pool)


def _combine_sum(per_sample, gate_logits, gate, pool):
    return per_sample.mean(dim=1).sum(), _batch_gate(gate_logits, per_sample.shape[0], per_sample, pool)


def _combine_mean(per_sample, gate_logits, gate, pool):
    return per_sample.mean(dim=1).mean(), _batch_gate(gate_logits, per_sample.shape[0], per_sample, pool)


COMBINE_MODES = {"gated": _combine_gated, "sum": _combine_sum, "mean": _combine_mean}


def check_gate_combine(gate: str, combine: str, pool: str = "probs") -> None:
    """UserError naming the recipe key for an unknown ``pretext.gate``, ``pretext.combine``
    or ``pretext.gate_pool``."""
    if gate not in GATE_MODES:
        raise unknown_name("pretext.gate", gate, GATE_MODES)
    if combine not in COMBINE_MODES:
        raise unknown_name("pretext.combine", combine, COMBINE_MODES)
    if pool not in GATE_POOLS:
        raise unknown_name("pretext.gate_pool", pool, GATE_POOLS)


def combine_pretext_losses(
    per_sample: torch.Tensor,
    gate_logits: torch.Tensor | None,
    *,
    gate: str,
    combine: str,
    pool: str = "probs",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pretext loss ``L_ssl`` from the per-sample task losses (docs/method.md section 2).

    per_sample: ``[T, B]`` float, ``l[t, i] = CE(head_t(z_i), y_t[i])``.
    gate_logits: ``[B, T]`` float or None (only ``combine="gated"`` needs it).
    Returns ``(L_ssl, gate_values)``: a scalar, and ``[T]`` float32 detached for logging.

    - ``gated`` + ``reference``: one batch gate ``g``, detached: ``mean_i
      softmax(gate_logits_i)`` with ``pool="probs"``, ``softmax(mean_i gate_logits_i)``
      with ``pool="logits"``; ``L = sum_t g[t] * mean_i l[t, i]``; gate_values = g.
    - ``gated`` + ``learned``: ``g[t, i] = softmax(gate_logits_i)[t]`` with gradient,
      ``L = mean_i sum_t g[t, i] * l[t, i]``; gate_values = ``mean_i g[:, i]``.
    - ``sum``: ``L = sum_t mean_i l[t, i]``; ``mean``: that divided by T. The gate does
      not enter the loss; gate_values is still the pooled gate (what it would say), or
      uniform ``1/T`` when gate_logits is None.

    With no task (``T = 0``) the loss is 0 and gate_values empty.
    """
    check_gate_combine(gate, combine, pool)
    if per_sample.shape[0] == 0:
        return per_sample.new_zeros((), dtype=torch.float32), per_sample.new_zeros(0, dtype=torch.float32)
    if gate_logits is not None and tuple(gate_logits.shape) != tuple(per_sample.shape[::-1]):
        raise ValueError(
            f"gate_logits must be [B, T] = {list(per_sample.shape[::-1])}, got {list(gate_logits.shape)}"
        )
    return COMBINE_MODES[combine](per_sample.float(), gate_logits, gate, pool)
