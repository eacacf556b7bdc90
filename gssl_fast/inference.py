"""Trained models outside the trainer: a run folder or a checkpoint in, a model out.

    import gssl_fast
    model = gssl_fast.load_model("runs/demo")          # newest checkpoint of the run
    logits = model(pixels)                             # [B, 3, H, W] float in [0, 1] -> [B, K]

Checkpoints carry the resolved recipe and what the model was built from, so the file
alone rebuilds the model; it is read as data (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from gssl_fast import checkpoint
from pipelines.errors import UserError
from gssl_fast.checkpoint import STAGES_DIR, stage_dir
from gssl_fast.stages import run_folder_of


class Classifier(nn.Module):
    """``[B, 3, H, W]`` pixels (float in [0, 1], or uint8) -> ``[B, K]`` class logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["logits"]


def checkpoint_of(path: str | os.PathLike) -> tuple[Path, str]:
    """``(checkpoint file, stage)`` of ``path``: the file itself, or the newest checkpoint
    of the run folder ``path``; for a run of a staged method (G-SimCLR) the newest of the
    stage whose model classifies (``Method.exported_stage``). ``stage`` is "" for a
    run trained in one piece."""
    path = Path(path)
    if path.is_file():
        folder = path.parent.parent  # <run>/stages/<stage>/checkpoints/<file>
        return path, folder.name if folder.parent.name == STAGES_DIR else ""
    found = checkpoint.list_checkpoints(path)
    if not found and (path / STAGES_DIR).is_dir():
        stage = exported_stage(path)
        found = checkpoint.list_checkpoints(stage_dir(path, stage))
        if not found:
            raise UserError(f"{path} is a staged run whose {stage} stage has no checkpoint yet; finish it with "
                            f"python -m gssl_fast.train {path / 'config.toml'} --out {path} --resume auto")
        return found[-1], stage
    if not found:
        raise UserError(f"{path} is neither a checkpoint file nor a run folder with checkpoints "
                        f"({path / checkpoint.CHECKPOINT_DIR} holds none)")
    return found[-1], ""


def exported_stage(run_dir: Path) -> str:
    """The stage of a staged run whose model ``load_model`` exports, from its recipe."""
    from gssl_fast.config import load_recipe
    from gssl_fast.methods import method_class

    recipe = load_recipe(run_dir / "config.toml")
    return method_class(recipe.method.name).exported_stage


def load_run(path: str | os.PathLike):
    """``(recipe, method, state)`` of a run folder or checkpoint file: the method (for a
    staged run, the exported stage's) built from the checkpoint's recipe, with its
    model's weights loaded (train mode)."""
    from gssl_fast.config import recipe_from_dict, tomllib
    from gssl_fast.methods import MethodContext, build_method

    file, stage = checkpoint_of(path)
    state = checkpoint.load(file)
    if "recipe" not in state or "context" not in state:
        raise UserError(f"{file} carries no recipe: it was not written by this version of gssl_fast.train")
    recipe = recipe_from_dict(tomllib.loads(state["recipe"]), f"the recipe inside {file}")
    c = state["context"]
    run_dir = run_folder_of(file.parent.parent, stage)  # <run>[/stages/<stage>]/checkpoints/<file>
    method = build_method(recipe.method, MethodContext.of(recipe, c["class_counts"], c["mean"], c["std"],
                                                          classes=tuple(c.get("classes", ())), run_dir=run_dir))
    if stage:
        method = dict(method.stages())[stage]()
    method.model.load_state_dict(state["model"])
    method.load_state_dict(state.get("method", {}))
    return recipe, method, state


def load_for_evaluation(path: str | os.PathLike):
    """``(recipe, method, model, val)``: a run's evaluated weights (``method.eval_model()``,
    eval mode) and its recipe's validation split as an ``ArrayDataset``."""
    from pipelines.datasets import load_dataset

    recipe, method, _ = load_run(path)
    return recipe, method, method.eval_model().eval(), load_dataset(recipe.data, "val")


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a run folder (its newest checkpoint) or of a checkpoint file,
    in eval mode on ``device``: ``[B, 3, H, W]`` float pixels in [0, 1] -> ``[B, K]`` logits."""
    _, method, _ = load_run(path)
    return Classifier(method.eval_model()).to(device).eval()
