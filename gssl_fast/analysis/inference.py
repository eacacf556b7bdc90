"""Trained models outside the trainer: a run folder or a checkpoint in, a model out.

    import gssl_fast
    model = gssl_fast.load_model("runs/demo")          # newest checkpoint of the run
    logits = model(pixels)                             # [B, 3, H, W] float in [0, 1] -> [B, K]

Checkpoints carry the resolved recipe and what the model was built from, so the file
alone rebuilds the model; it is read as data (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from gssl_fast import checkpoint
from pipelines.errors import UserError
from gssl_fast.run.stages import trained_checkpoint


TEMPERATURE = "temperature.json"  # beside the run: what evaluate --calibration fitted


class Classifier(nn.Module):
    """``[B, 3, H, W]`` pixels (float in [0, 1], or uint8) -> ``[B, K]`` class logits,
    divided by ``temperature`` (temperature scaling; 1: the logits as trained)."""

    def __init__(self, model: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)["logits"]
        return logits / self.temperature if self.temperature != 1.0 else logits


def load_run(path: str | os.PathLike):
    """``(recipe, method, state)`` of a run folder or checkpoint file
    (``stages.trained_checkpoint``): the method whose model the checkpoint holds, built
    from the checkpoint's recipe, with its weights loaded (train mode)."""
    from gssl_fast.config import recipe_from_dict, tomllib
    from gssl_fast.methods import MethodContext, build_method

    trained = trained_checkpoint(path)
    file = trained.file
    state = checkpoint.load(file)
    if "recipe" not in state or "context" not in state:
        raise UserError(f"{file} carries no recipe: it was not written by this version of gssl_fast.train")
    recipe = recipe_from_dict(tomllib.loads(state["recipe"]), f"the recipe inside {file}")
    c = state["context"]
    method = build_method(recipe.method, MethodContext.of(recipe, c["class_counts"], c["mean"], c["std"],
                                                          classes=tuple(c.get("classes", ())), run_dir=trained.run_dir))
    method = trained.pick(method)
    method.model.load_state_dict(state["model"])
    method.load_state_dict(state.get("method", {}))
    return recipe, method, state


def load_for_evaluation(path: str | os.PathLike):
    """``(recipe, method, model, val)``: a run's evaluated weights (``method.eval_model()``,
    eval mode) and its recipe's validation split as the run read it
    (``gssl_fast.analysis.split.EvalSplit``)."""
    from gssl_fast.analysis.split import eval_split

    recipe, method, _ = load_run(path)
    return recipe, method, method.eval_model().eval(), eval_split(recipe.data, "val")


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu", calibrated: bool = False) -> nn.Module:
    """The trained model of a run folder (its newest checkpoint) or of a checkpoint file,
    in eval mode on ``device``: ``[B, 3, H, W]`` float pixels in [0, 1] -> ``[B, K]`` logits;
    ``calibrated``: divided by the temperature ``python -m gssl_fast.evaluate RUN
    --calibration`` fitted (its softmax then calibrated)."""
    _, method, _ = load_run(path)
    temperature = fitted_temperature(path) if calibrated else 1.0
    return Classifier(method.eval_model(), temperature).to(device).eval()


def fitted_temperature(path: str | os.PathLike) -> float:
    """The temperature written beside the run of ``path`` by ``evaluate --calibration``."""
    import json

    file = trained_checkpoint(path).run_dir / TEMPERATURE
    if not file.is_file():
        raise UserError(f"{file} is missing: fit the temperature first with python -m gssl_fast.evaluate {path} "
                        "--calibration")
    return float(json.loads(file.read_text())["temperature"])
