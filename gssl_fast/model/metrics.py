"""Accuracy metrics and evaluation over a loader."""

from __future__ import annotations

import numpy as np
import torch

from gssl_fast.faults import crash_point

# Shot groups of long-tailed evaluation (Liu et al. 2019): classes with more than 100
# training images are "many", fewer than 20 "few".
MANY_SHOT, FEW_SHOT = 100, 20


def topk_predictions(logits: torch.Tensor, k: int = 5) -> torch.Tensor:
    """``[B, K]`` logits -> ``[B, min(k, K)]`` int64 class ids, best first."""
    return logits.topk(min(k, logits.shape[1]), dim=1).indices


def accuracy_report(top5: np.ndarray, labels: np.ndarray, num_classes: int, train_counts=None) -> dict:
    """Top-1, top-5 and per-class accuracy in percent.

    top5: ``[N, k]`` predicted ids, best first; labels: ``[N]``. With ``train_counts``
    ([K] training images per class) also many/medium/few-shot accuracy.
    """
    correct1 = top5[:, 0] == labels
    correct5 = (top5 == labels[:, None]).any(axis=1)
    hits = np.bincount(labels[correct1], minlength=num_classes)
    totals = np.bincount(labels, minlength=num_classes)
    per_class = np.where(totals > 0, 100.0 * hits / np.maximum(totals, 1), np.nan)
    report = {
        "val_acc1": float(100.0 * correct1.mean()) if len(labels) else 0.0,
        "val_acc5": float(100.0 * correct5.mean()) if len(labels) else 0.0,
        "val_per_class": [None if np.isnan(a) else round(float(a), 2) for a in per_class],
    }
    if train_counts is not None:
        counts = np.asarray(train_counts)
        groups = {"many": counts > MANY_SHOT, "medium": (counts <= MANY_SHOT) & (counts >= FEW_SHOT), "few": counts < FEW_SHOT}
        for name, mask in groups.items():
            vals = per_class[mask & (totals > 0)]
            report[f"val_{name}_shot"] = float(vals.mean()) if len(vals) else None
    return report


def gather_by_index(accelerator, index: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every process's rows in dataset order: ``index`` ``[n]`` int64 (the dataset
    positions of this process's rows) and ``values`` (each ``[n, ...]``) ->
    ``(index [N], *values)`` on the CPU, over all processes, each position once, sorted.

    One padded gather per tensor, so shards of unequal length need no matching number of
    collective calls; duplicate positions (none with disjoint shards) count once.
    """
    parts = [index, *values]
    if accelerator.num_processes > 1:
        parts = [accelerator.gather(accelerator.pad_across_processes(t, dim=0, pad_index=-1)) for t in parts]
    parts = [t.cpu() for t in parts]
    keep = parts[0] >= 0
    parts = [t[keep] for t in parts]
    _, first = np.unique(parts[0].numpy(), return_index=True)
    order = torch.from_numpy(first)
    return tuple(t[order] for t in parts)


@torch.no_grad()
def evaluate(model, loader, *, accelerator, num_classes: int, train_counts=None) -> dict:
    """Accuracy of ``model`` (a task whose ``forward(images)`` returns ``logits``) over
    ``loader``, whose processes each read a disjoint shard: every process collects
    ``[n, k + 1]`` int64 rows (top-k ids, label), joined by :func:`gather_by_index`."""
    model.eval()
    k = min(5, num_classes)
    rows, index = [torch.zeros(0, k + 1, dtype=torch.int64, device=accelerator.device)], [
        torch.zeros(0, dtype=torch.int64, device=accelerator.device)]
    with accelerator.autocast():
        for batch in loader:
            crash_point("evaluate")
            logits = model(batch["images"])["logits"].float()
            rows.append(torch.cat([topk_predictions(logits, k), batch["labels"][:, None]], 1))
            index.append(batch["indices"])
    _, table = gather_by_index(accelerator, torch.cat(index), torch.cat(rows))
    table = table.numpy()
    return accuracy_report(table[:, :k], table[:, k], num_classes, train_counts)
