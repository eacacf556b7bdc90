"""The gated multi-head on the pooled features (docs/method.md section 2).

    z [B, D] --classifier--> logits [B, K]
             --pretext[t]--> pretext_logits[t] [B, n_t]   (rotation 16, flip 2, perm 6)
             --gate-------> gate_logits [B, T]            (paper eq. 1: G = softmax(W^T X + b))

The heads are plain ``nn.Linear``, or ``NormedLinear`` (cosine logits) when the class
loss is LDAM, whose margins are defined on cosine logits.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.localizable import TASKS, check_tasks


class NormedLinear(nn.Module):
    """Cosine-similarity layer of LDAM-DRW (Cao et al. 2019): ``normalize(x) @ normalize(W)^T``.

    x: ``[B, in_features]`` float; returns ``[B, out_features]`` float32 in ``[-1, 1]``. No bias.
    ``weight`` has ``nn.Linear``'s layout ``[out_features, in_features]``; each row is
    one class direction, drawn uniform in ``[-1, 1]`` and scaled to unit norm.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Float32 even under autocast: the cosines are multiplied by the LDAM scale (30),
        # which would turn bf16's rounding of them (up to 2^-8) into logit errors of ~0.1.
        # The layer is [B, D] x [D, K], too small for the precision to cost time.
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(F.normalize(x.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class GatedMultiHead(nn.Module):
    """Class head, one head per enabled pretext task and the gate, all on the same features.

    tasks: names from ``pipelines.localizable.TASKS``; kept in canonical order
    (rotation, flip, perm), so ``gate_logits[:, t]`` belongs to ``self.tasks[t]``.
    normed: ``NormedLinear`` class and pretext heads (the LDAM setting); the gate
    stays an ``nn.Linear`` with bias, as in eq. 1.
    """

    def __init__(self, in_features: int, num_classes: int, tasks: Sequence[str], *, normed: bool = False):
        super().__init__()
        self.tasks = check_tasks(tasks)
        head = NormedLinear if normed else nn.Linear
        self.classifier = head(in_features, num_classes)
        self.pretext = nn.ModuleDict({t: head(in_features, TASKS[t]) for t in self.tasks})
        self.gate = nn.Linear(in_features, len(self.tasks)) if self.tasks else None

    def forward(self, z: torch.Tensor) -> dict:
        """z: ``[B, D]`` float features.

        Returns ``logits`` ``[B, K]``, ``pretext_logits`` ``{task: [B, n_t]}`` and, when at
        least one task is enabled, ``gate_logits`` ``[B, T]`` (before the softmax).
        """
        out = {
            "logits": self.classifier(z),
            "pretext_logits": {t: head(z) for t, head in self.pretext.items()},
        }
        if self.gate is not None:
            out["gate_logits"] = self.gate(z)
        return out
