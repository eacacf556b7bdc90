"""The supervised method: G-SSL as before, and MixUp / CutMix through timm's Mixup."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from gssl_fast.config import load_recipe
from gssl_fast.methods import MethodContext, build_method
from gssl_fast.train import main
from pipelines.datasets import make_shapes
from pipelines.errors import UserError
from pipelines.torch import make_loader
from tests.gssl_fast.methods.shapes import on_shapes

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
MIX = '[method]\nname = "supervised"\n{key} = 1.0\n\n[pretext]\ntasks = []\n'


@pytest.mark.parametrize("key, mode", [("mixup_alpha", "mixup"), ("cutmix_alpha", "cutmix")])
def test_mixed_step_is_soft_target_ce_of_timm_mixed_pixels(tiny_recipe, key, mode):
    recipe = load_recipe(tiny_recipe(MIX.format(key=key)))
    method = build_method(recipe.method, MethodContext.of(recipe, [4] * 10, (0.5,) * 3, (0.25,) * 3))
    batch = next(iter(make_loader(make_shapes(32, image_size=16), batch_size=16, tasks=(), normalize=False,
                                  device="cpu")))
    np.random.seed(3)
    out = method.training_step(method.model, {"train": batch}, accelerator=Accelerator(cpu=True))
    np.random.seed(3)
    reference = Mixup(**{"mixup_alpha": 0.0, "cutmix_alpha": 0.0, key: 1.0}, num_classes=10, label_smoothing=0.0)
    mixed, soft = reference(batch["images"].float() / 255, batch["labels"])
    expected = SoftTargetCrossEntropy()(method.model(mixed)["logits"], soft)
    assert torch.allclose(out["loss"], expected) and set(out) == {"loss", "loss_cls"}
    if mode == "mixup":  # every pixel is a blend, so the images really changed
        assert not torch.equal(mixed, batch["images"].float() / 255)


def test_mixing_rules(tiny_recipe):
    with pytest.raises(UserError, match=r"pretext\.tasks must be \[\] with MixUp or CutMix"):
        load_recipe(tiny_recipe('[method]\nname = "supervised"\nmixup_alpha = 1.0\n'))
    with pytest.raises(UserError, match=r"train\.batch_size must be even"):
        load_recipe(tiny_recipe(MIX.format(key="cutmix_alpha")), ["train.batch_size=31"])
    with pytest.raises(UserError, match=r"loss\.name must be 'ce'"):
        load_recipe(tiny_recipe(MIX.format(key="mixup_alpha")), ["loss.name=ldam"])
    with pytest.raises(UserError, match=r"method\.mix_prob must be in \[0, 1\]"):
        load_recipe(tiny_recipe(MIX.format(key="mixup_alpha")), ["method.mix_prob=2.0"])


@pytest.mark.slow
@pytest.mark.parametrize("stem", ["tinyimagenet_mixup", "tinyimagenet_cutmix"])
@pytest.mark.parametrize("loader", ["torch", "dali", "ffcv"])
def test_table3_recipes_run_with_each_loader(tmp_path, stem, loader):
    """The MixUp / CutMix recipes, a few steps on the built-in data with each loader."""
    out = tmp_path / "run"
    args = on_shapes(f"train.loader={loader}", "model.backbone=resnet18_cifar", "data.image_size=32")
    assert main([str(RECIPES / f"{stem}.toml"), "--out", str(out), *args]) == 0
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["train_images"] == 64 and "pretext_acc" not in row and row["train_loss"] > 0


def test_mixed_run_logs_loss_and_no_training_accuracy(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    assert main([str(tiny_recipe(MIX.format(key="mixup_alpha"))), "--out", str(out)]) == 0
    row = json.loads((out / "metrics.jsonl").read_text())
    assert "train_loss" in row and "loss_cls" in row and "val_acc1" in row
    assert "pretext_acc" not in row and "gate" not in row


def test_table3_recipes():
    for stem, key in (("tinyimagenet_mixup", "mixup_alpha"), ("tinyimagenet_cutmix", "cutmix_alpha")):
        recipe = load_recipe(RECIPES / f"{stem}.toml")
        base = load_recipe(RECIPES / "tinyimagenet.toml")
        assert getattr(recipe.method, key) == 1.0 and recipe.pretext.tasks == ()
        assert (recipe.model, recipe.optim, recipe.train, recipe.data) == (base.model, base.optim, base.train,
                                                                           base.data)


def test_existing_recipes_keep_their_meaning():
    """Recipes without [method] are the supervised method with no mixing."""
    for stem in ("demo", "cifar10_lt", "cifar100_lt", "tinyimagenet", "tinyimagenet_short"):
        method = load_recipe(RECIPES / f"{stem}.toml").method
        assert method.name == "supervised" and method.mixup_alpha == method.cutmix_alpha == 0.0
