"""Evaluation on untransformed images: top-1, top-5, per-class and shot-group accuracy."""

from __future__ import annotations

import numpy as np
import torch

from gssl_fast.metrics import accuracy_report, topk_predictions


@torch.no_grad()
def evaluate(model, loader, *, accelerator, num_classes: int, train_counts=None) -> dict:
    """Accuracy of ``model`` (a task whose ``forward(images)`` returns ``logits``) over
    ``loader``, whose processes each read a disjoint shard.

    Every process collects ``[n, k + 2]`` int64 rows (top-k ids, label, dataset index),
    then one padded gather joins them, so shards of unequal length need no matching
    number of collective calls. Duplicate indices (none with disjoint shards) count once.
    """
    model.eval()
    k = min(5, num_classes)
    rows = []
    with accelerator.autocast():
        for batch in loader:
            logits = model(batch["images"])["logits"].float()
            rows.append(torch.cat([topk_predictions(logits, k), batch["labels"][:, None], batch["indices"][:, None]], 1))
    local = torch.cat(rows) if rows else torch.zeros(0, k + 2, dtype=torch.int64, device=accelerator.device)
    if accelerator.num_processes > 1:
        local = accelerator.pad_across_processes(local, dim=0, pad_index=-1)
        local = accelerator.gather(local)
    table = local.cpu().numpy()
    table = table[table[:, -1] >= 0]
    _, first = np.unique(table[:, -1], return_index=True)
    table = table[first]
    return accuracy_report(table[:, :k], table[:, k], num_classes, train_counts)
