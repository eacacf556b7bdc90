"""Adversarial training: the step's images are PGD images within eps of the loader's,
the attack maximizes the G-SSL loss, robust accuracy is logged, and the recipe runs
with every loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from gssl_fast.config import load_recipe
from tests.gssl_fast.methods.shapes import on_shapes
from gssl_fast.evaluate import main as evaluate_main
from gssl_fast.methods import MethodContext, build_method
from gssl_fast.train import main
from pipelines.datasets import make_shapes
from pipelines.errors import UserError
from pipelines.torch import make_loader

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
ADV = '[method]\nname = "adversarial"\nsteps = 2\neval_images = 16\neval_attacks = ["pgd20"]\neval_every_epochs = 1\n'


def method_and_batch(recipe):
    ds = make_shapes(32, image_size=16)
    method = build_method(recipe.method, MethodContext.of(recipe, [4] * 10, (0.5,) * 3, (0.25,) * 3))
    loader = make_loader(ds, batch_size=16, tasks=recipe.pretext.tasks, normalize=False, device="cpu", seed=1)
    return method, next(iter(loader))


def test_step_trains_on_pgd_images_within_eps(tiny_recipe, monkeypatch):
    recipe = load_recipe(tiny_recipe(ADV))
    method, batch = method_and_batch(recipe)
    seen = []
    forward = method.model.forward

    def spy(images, labels=None, targets=None, **kw):
        seen.append((images.detach().clone(), kw.get("detach_gate", False)))
        return forward(images, labels, targets, **kw)

    monkeypatch.setattr(method.model, "forward", spy)
    torch.manual_seed(0)
    out = method.training_step(method.model, {"train": batch}, accelerator=Accelerator(cpu=True))
    clean = batch["images"].float() / 255
    assert len(seen) == recipe.method.steps + 1  # the attack's forward passes, then the training one
    assert [detached for _, detached in seen] == [True] * recipe.method.steps + [False]  # the attack's gate is fixed
    trained_on = seen[-1][0]
    assert (trained_on - clean).abs().max() <= 8 / 255 + 1e-6 and (trained_on - clean).abs().max() > 1 / 255
    assert trained_on.min() >= 0 and trained_on.max() <= 1
    assert out["loss"].requires_grad and {"loss_cls", "loss_ssl", "gate/rotation", "pretext_acc/perm"} <= set(out)


def test_the_attack_raises_the_gssl_loss(tiny_recipe):
    recipe = load_recipe(tiny_recipe(ADV), ["method.steps=5"])
    method, batch = method_and_batch(recipe)
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    adversarial = method.training_step(method.model, {"train": batch}, accelerator=acc)["loss"].item()
    clean = method.gssl_step(method.model, batch["images"], batch)["loss"].item()
    assert adversarial > clean


def test_recipe_checks(tiny_recipe):
    for bad, key in (("eps_255 = 0.0", "method.eps_255"), ('eval_attacks = ["fgsm"]', "method.eval_attacks"),
                     ("steps = 0", "method.steps")):
        with pytest.raises(UserError, match=key):
            load_recipe(tiny_recipe(f'[method]\nname = "adversarial"\n{bad}\n'))


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["torch", "dali", "ffcv"])
def test_the_papers_recipe_runs_with_each_loader(tmp_path, loader, capsys):
    """recipes/cifar10_pgd.toml, a few steps on the built-in data, then the evaluation command."""
    out = tmp_path / "run"
    args = on_shapes(f"train.loader={loader}", "method.steps=2", "method.eval_images=16",
                     'method.eval_attacks=["pgd20"]')
    assert main([str(RECIPES / "cifar10_pgd.toml"), "--out", str(out), *args]) == 0
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["val_robust_images"] == 16 and 0 <= row["val_pgd20_acc1"] <= row["val_acc1"] + 25
    assert row["train_images"] == 64 and set(row["gate"]) == {"rotation", "flip", "perm"}
    assert evaluate_main([str(out), "--attack", "pgd20", "--limit", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-3:]
    assert [line.split()[0] for line in lines] == ["acc1", "acc5", "pgd20_acc1"]


def test_the_papers_recipe_loads():
    recipe = load_recipe(RECIPES / "cifar10_pgd.toml")
    m = recipe.method
    assert (m.name, m.eps_255, m.step_255, m.steps) == ("adversarial", 8.0, 2.0, 10)
    assert recipe.model.backbone == "wrn40_2" and recipe.data.mean == (0.5, 0.5, 0.5) == recipe.data.std
    assert recipe.pretext.tasks == ("rotation", "flip", "perm") and recipe.train.epochs == 200
