"""The G-SSL component: input normalization + backbone + gated multi-head + losses,
one forward, one dict out. Every training method builds its model from it.

    pixels [B, 3, H, W] --normalize--> --backbone--> features z [B, D]
        --heads--> logits, pretext logits, gate
    loss = loss_cls + lambda * loss_ssl                       (paper eq. 3, docs/method.md section 2)

One backbone pass serves the class head and every pretext head (LoRot-E): the images
already carry the localizable transform, drawn by the loader.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gssl_fast.model.heads import GatedMultiHead
from gssl_fast.model.losses import (
    ClassLoss,
    build_class_loss,
    check_gate_combine,
    combine_pretext_losses,
    cross_entropy,
)
from gssl_fast.sections import LossConfig, ModelConfig, PretextConfig
from pipelines.errors import UserError


class GSSLTask(nn.Module):
    """Gated self-supervised learning on top of any backbone.

    backbone: a module mapping ``[B, 3, H, W]`` float to pooled features ``[B, D]`` with
    ``num_features == D`` (a timm model built with ``num_classes=0``).
    normalize: the input layer turning pixels (uint8, or float in [0, 1]) into the
    backbone's input (``model.network.InputNormalize``); None feeds the images as they are.
    tasks: enabled pretext tasks (names of ``pipelines.localizable.TASKS``), any order.
    gate, combine, gate_pool, lam: ``pretext.gate``, ``pretext.combine``,
    ``pretext.gate_pool``, ``pretext.lambda``.
    class_loss: loss of the class head; plain cross-entropy when None.
    normed_heads: cosine (``NormedLinear``) class and pretext heads, for LDAM.
    pretext_scale: factor on the pretext logits before their cross-entropy. With cosine
    heads the authors take the CE of the raw cosines (1.0, the default); cosines lie in
    [-1, 1], so a 16-way softmax of them cannot go below a CE of about
    ``log(1 + 15 / e^2) ~ 1.1``, and a scale (the LDAM ``s = 30``) lets the heads fit.

    The gate layer trains only with ``gate="learned"`` and ``combine="gated"``; otherwise
    nothing in the loss depends on it, and its parameters are frozen
    (``requires_grad=False``) so DDP needs no ``find_unused_parameters``. In ``reference``
    mode it stays at its random initialization, as in the authors' code.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        tasks: Sequence[str],
        *,
        gate: str = "reference",
        combine: str = "gated",
        gate_pool: str = "probs",
        lam: float = 0.1,
        class_loss: ClassLoss | None = None,
        normed_heads: bool = False,
        pretext_scale: float = 1.0,
        normalize: nn.Module | None = None,
    ):
        super().__init__()
        check_gate_combine(gate, combine, gate_pool)
        if lam < 0:
            raise UserError(f"pretext.lambda must be >= 0, got {lam}")
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.backbone = backbone
        self.heads = GatedMultiHead(backbone.num_features, num_classes, tasks, normed=normed_heads)
        self.tasks = self.heads.tasks
        self.class_loss = class_loss if class_loss is not None else ClassLoss(cross_entropy, num_classes)
        self.gate_mode = gate
        self.combine = combine
        self.gate_pool = gate_pool
        self.lam = float(lam)
        self.pretext_scale = float(pretext_scale)
        if self.heads.gate is not None and not (gate == "learned" and combine == "gated"):
            self.heads.gate.requires_grad_(False)

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        targets: Mapping[str, torch.Tensor] | None = None,
        *,
        detach_gate: bool = False,
    ) -> dict:
        """images ``[B, 3, H, W]`` pixels (uint8, or float in [0, 1]); labels ``[B]`` int64; targets ``{"target_<task>": [B] int64}``.
        detach_gate: the gate weighs the pretext losses as a constant, also in ``learned``
        mode (the adversarial attack's objective; docs/method.md section 3).

        Always: ``features`` ``[B, D]``, ``logits`` ``[B, K]``, ``pretext_logits``
        ``{task: [B, n_t]}`` (and ``gate_logits`` ``[B, T]`` with a task).
        With labels: ``loss_cls``. With targets and a task: ``loss_<task>`` (batch mean,
        detached, for logging), ``loss_ssl``, ``gate`` ``[T]`` float32 detached (batch-mean
        gate values). ``loss`` = ``loss_cls + lam * loss_ssl`` over the terms present
        (``lam * loss_ssl`` alone for unlabeled images); absent when there is no term.
        """
        z = self.backbone(self.normalize(images))
        out = {"features": z, **self.heads(z)}
        terms = []
        if labels is not None:
            out["loss_cls"] = self.class_loss(out["logits"], labels)
            terms.append(out["loss_cls"])
        if targets is not None and self.tasks:
            out.update(self.pretext_terms(out["pretext_logits"], out.get("gate_logits"), targets,
                                          detach_gate=detach_gate))
            terms.append(self.lam * out["loss_ssl"])
        if terms:
            out["loss"] = terms[0] if len(terms) == 1 else terms[0] + terms[1]
        return out

    def pretext_terms(self, pretext_logits: Mapping[str, torch.Tensor], gate_logits: torch.Tensor | None,
                      targets: Mapping[str, torch.Tensor], *, detach_gate: bool = False) -> dict:
        """The gated pretext loss of the images whose heads' outputs are given (a method
        picks the rows that carry the localizable transform): ``loss_<task>`` (batch means,
        detached), ``loss_ssl`` (with gradient) and ``gate`` ``[T]`` (detached).

        pretext_logits ``{task: [N, n_t]}``, gate_logits ``[N, T]`` or None, targets
        ``{"target_<task>": [N] int64}``.
        """
        per_sample = self.pretext_losses(pretext_logits, targets)  # [T, N]
        out = {f"loss_{task}": losses.detach().mean() for task, losses in zip(self.tasks, per_sample)}
        if detach_gate and gate_logits is not None:
            gate_logits = gate_logits.detach()
        out["loss_ssl"], out["gate"] = combine_pretext_losses(
            per_sample, gate_logits, gate=self.gate_mode, combine=self.combine, pool=self.gate_pool
        )
        return out

    def pretext_losses(self, pretext_logits: dict, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[T, B]`` float32 per-sample cross-entropy of every enabled head."""
        missing = [f"target_{t}" for t in self.tasks if f"target_{t}" not in targets]
        if missing:
            raise KeyError(f"pretext targets lack {missing}; got {sorted(targets)}")
        losses = [
            F.cross_entropy(self.pretext_scale * pretext_logits[t].float(), targets[f"target_{t}"], reduction="none")
            for t in self.tasks
        ]
        return torch.stack(losses)


def pretext_batch_targets(batch: Mapping[str, torch.Tensor], tasks: Sequence[str]) -> dict[str, torch.Tensor]:
    """The ``target_<task>`` entries of a loader batch for ``tasks``."""
    return {f"target_{t}": batch[f"target_{t}"] for t in tasks}


def gssl_scalars(out: Mapping, targets: Mapping[str, torch.Tensor], tasks: Sequence[str]) -> dict[str, torch.Tensor]:
    """What a step of the G-SSL component logs: 0-dim float32 tensors, detached.

    ``loss_cls``, ``loss_ssl``, ``loss_<task>`` (batch means), ``gate/<task>`` (the
    batch-mean gate value) and ``pretext_acc/<task>`` (top-1 of the head, percent).
    Values stay on the device: no host sync per step.
    """
    zero = out["logits"].detach().new_zeros((), dtype=torch.float32)
    row = {"loss_cls": out.get("loss_cls", zero).detach().float(), "loss_ssl": out.get("loss_ssl", zero).detach().float()}
    for j, t in enumerate(tasks):
        row[f"loss_{t}"] = out[f"loss_{t}"].float()
        row[f"gate/{t}"] = out["gate"][j].float()
        hits = out["pretext_logits"][t].argmax(1) == targets[f"target_{t}"]
        row[f"pretext_acc/{t}"] = 100.0 * hits.float().mean()
    return row


def build_task(
    model_cfg: ModelConfig,
    pretext_cfg: PretextConfig,
    loss_cfg: LossConfig,
    *,
    num_classes: int,
    class_counts: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
) -> GSSLTask:
    """The recipe's ``[model]``, ``[pretext]`` and ``[loss]`` sections as a GSSLTask.

    class_counts: ``[K]`` training images per class (LDAM margins, DRW weights).
    mean, std: the input normalization in [0, 1] units (``data.mean`` / ``data.std``
    or the dataset's defaults).
    LDAM brings cosine heads; the pretext logits are scaled by ``loss.pretext_scale``
    (1: the raw cosines, as the authors' code). ``model.init = "kaiming"`` re-initializes
    every ``nn.Linear`` and ``nn.Conv2d`` weight, the gate's included, kaiming-normal.
    """
    from gssl_fast.model.network import (  # network.py registers the CIFAR nets in timm
        InputNormalize,
        build_backbone,
        initialize,
    )

    if len(class_counts) != num_classes:
        raise ValueError(f"class_counts has {len(class_counts)} entries for {num_classes} classes")
    class_loss = build_class_loss(loss_cfg, class_counts)
    ldam = loss_cfg.name == "ldam"
    task = GSSLTask(
        build_backbone(model_cfg),
        num_classes,
        pretext_cfg.tasks,
        gate=pretext_cfg.gate,
        combine=pretext_cfg.combine,
        gate_pool=pretext_cfg.gate_pool,
        lam=pretext_cfg.lam,
        class_loss=class_loss,
        normed_heads=ldam,
        pretext_scale=loss_cfg.pretext_scale,
        normalize=InputNormalize(mean, std, channels_last=model_cfg.channels_last),
    )
    return initialize(task, model_cfg.init)
