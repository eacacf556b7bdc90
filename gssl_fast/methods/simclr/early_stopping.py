"""Keras' early stopping, as the authors' notebooks stop the autoencoder, the linear
probes and fine-tuning: on a held-out loss, keeping the best epoch's weights."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EarlyStopping:
    """Keras' ``EarlyStopping(monitor="val_loss", patience, restore_best_weights=True)``.

    After each epoch :meth:`update` with the monitored loss: an epoch improves when its loss
    is below the best so far (``min_delta = 0``), and its weights are kept (a CPU copy of
    the state dict); training stops once ``patience`` epochs in a row have not improved
    (:attr:`stopped`); :meth:`restore` puts the best epoch's weights back.
    """

    patience: int
    best: float = math.inf
    best_epoch: int = -1
    wait: int = 0
    weights: dict | None = None

    @property
    def stopped(self) -> bool:
        return self.wait >= self.patience

    def update(self, loss: float, epoch: int, model: nn.Module) -> bool:
        """Records ``epoch``'s ``loss``; True when it is the lowest so far."""
        if loss < self.best:
            self.best, self.best_epoch, self.wait = loss, epoch, 0
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return True
        self.wait += 1
        return False

    def restore(self, model: nn.Module) -> None:
        if self.weights is not None:
            model.load_state_dict(self.weights)

    def state_dict(self) -> dict:
        return {"best": torch.tensor(self.best, dtype=torch.float64), "best_epoch": torch.tensor(self.best_epoch),
                "wait": torch.tensor(self.wait), "weights": dict(self.weights or {})}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.wait = float(state["best"]), int(state["best_epoch"]), int(state["wait"])
        self.weights = dict(state["weights"]) or None
