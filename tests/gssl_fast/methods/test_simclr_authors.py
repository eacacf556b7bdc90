"""G-SimCLR under the authors' protocol (recipes/*_authors.toml, docs/method.md section 4):
each point of their notebooks pinned (the view, the network, the schedule, the autoencoder
and k-means, the linear probe's optimizer and early stop, the two fine-tuning phases with
BatchNorm in inference mode), and every stage of the recipe run on the built-in data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gssl_fast.checkpoint import stage_dir
from gssl_fast.config import load_recipe
from gssl_fast.methods.simclr.early_stopping import EarlyStopping
from gssl_fast.methods.simclr.protocol import HEAD, fit_probe
from gssl_fast.methods.simclr.stages import finetune_positions, linear_split, pretrain_view
from gssl_fast.model.optim import cosine_restarts
from gssl_fast.run.stages import DONE
from gssl_fast.train import main
from pipelines.simclr_ops import ColorJitter
from pipelines.tf_color import TFColorJitter
from pipelines.views import CropFlip, Grayscale, PerBatch

ROOT = Path(__file__).resolve().parents[3]
RECIPES = ROOT / "recipes"
# The recipe on the built-in data, tiny: 8 pretraining steps, restarts every 2, 4, 8 steps.
TINY = ["data.name=shapes", "data.root=", "data.image_size=16", "data.train_size=256", "data.val_size=64",
        "train.epochs=1", "train.global_batch_size=0", "train.batch_size=32", "train.eval_batch_size=128",
        "train.num_threads=2", "method.clusters=8", "method.ae_epochs=3", "method.ae_batch_size=32",
        "method.linear_epochs=3", "method.linear_batch_size=32", "method.finetune_head_epochs=3",
        "method.finetune_epochs=3", "method.finetune_batch_size=8", "optim.first_decay_steps=2"]


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name, guided", [("cifar10_gsimclr_authors", True), ("cifar10_simclr_authors", False)])
def test_the_authors_recipes_pin_every_point_of_the_notebooks(name, guided):
    r = load_recipe(RECIPES / f"{name}.toml")
    m = r.method
    assert m.guided is guided and m.projection == (256, 128, 50) and m.temperature == 0.1
    assert r.train.global_batch_size == 64 and r.train.epochs == 15
    # The view: CustomAugment's flip and colour jitter (s 0.2, p 0.5), no crop, no grayscale, one draw a batch.
    assert pretrain_view(m, 32) == (PerBatch(CropFlip(padding=0, hflip=True)), PerBatch(TFColorJitter(0.2, 0.5)))
    assert (r.data.mean, r.data.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # x / 255
    # The network and the schedule: resnet_cifar10 with n = 4; SGD, CosineDecayRestarts(0.1, 1000).
    assert r.model.backbone == "resnet38v2_cifar"
    o = r.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.schedule) == ("sgd", 0.1, 0.0, 0.0, "cosine_restarts")
    assert (o.first_decay_steps, o.t_mul, o.m_mul, o.alpha) == (1000, 2.0, 1.0, 0.0)
    # Linear evaluation and fine-tuning.
    assert (m.linear_protocol, m.linear_lr, m.linear_batch_size, m.linear_epochs, m.patience) == (
        "authors", 1e-3, 64, 100, 2)
    assert (m.finetune_protocol, m.finetune_subset, m.finetune_fraction) == ("authors", "random", 0.1)
    assert (m.finetune_head_lr, m.finetune_head_epochs, m.finetune_lr, m.finetune_epochs, m.finetune_batch_size) == (
        1e-3, 35, 1e-5, 35, 64)
    if guided:  # the autoencoder and k-means
        assert (m.ae_decoder, m.ae_batch_size, m.ae_epochs, m.ae_patience, m.ae_lr) == ((128, 64, 32), 64, 100, 2, 1e-3)
        assert m.kmeans_n_init == 10 and m.clusters == 0


def test_the_standard_recipes_keep_the_standard_simclr_settings():
    for name in ("cifar10_gsimclr", "cifar10_simclr"):
        r = load_recipe(RECIPES / f"{name}.toml")
        assert "standard-SimCLR variant" in (RECIPES / f"{name}.toml").read_text().splitlines()[0]
        assert r.model.backbone == "resnet20_cifar" and r.optim.schedule == "cosine"
        m = r.method
        assert (m.view, m.linear_protocol, m.finetune_protocol, m.finetune_subset) == (
            "simclr", "standard", "standard", "balanced")
        view = pretrain_view(m, 32)
        assert [type(op).__name__ for op in view] == ["RandomResizedCrop", "CropFlip", "ColorJitter", "Grayscale"]
        assert view[2] == ColorJitter(0.5, 0.8) and view[3] == Grayscale(0.2)


# ------------------------------------------------------------------ early stopping and the probe
def test_early_stopping_is_keras_early_stopping_with_restore_best_weights():
    model = torch.nn.Linear(2, 1)
    stop = EarlyStopping(patience=2)
    seen = []
    for epoch, loss in enumerate([1.0, 0.8, 0.8, 0.9, 0.7]):
        with torch.no_grad():
            model.weight.fill_(epoch)
        seen.append(stop.update(loss, epoch, model))
        if stop.stopped:
            break
    assert seen == [True, True, False, False] and stop.best_epoch == 1 and stop.best == 0.8  # equal is no better
    again = EarlyStopping(2)
    again.load_state_dict(stop.state_dict())
    assert (again.best, again.best_epoch, again.wait, again.stopped) == (0.8, 1, 2, True)
    again.restore(model)
    assert model.weight.eq(1).all()


def test_fit_probe_is_adam_on_features_stopped_early_on_the_held_out_loss(monkeypatch):
    """Keras' Dense + Adam (epsilon 1e-7) on fixed features; batches of 64, the last one partial;
    stops ``patience`` epochs after its best held-out loss and keeps that epoch's weights."""
    made = []

    class Spy(torch.optim.Adam):
        def __init__(self, params, **kw):
            made.append(kw)
            super().__init__(params, **kw)

    steps = []
    real = torch.nn.functional.cross_entropy

    def counting(logits, target, *a, **k):
        steps.append(len(target))
        return real(logits, target, *a, **k)

    monkeypatch.setattr(torch.optim, "Adam", Spy)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", counting)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (150,), generator=g)
    x = torch.randn(150, 8, generator=g) + 2 * torch.nn.functional.one_hot(y, 8).float()
    held = (torch.randn(40, 8, generator=g), torch.randint(0, 3, (40,), generator=g))  # noise: overfits soon
    fit = fit_probe((x, y), held, num_classes=3, lr=1e-1, batch_size=64, max_epochs=50, patience=2, seed=3)
    assert made == [{"lr": 1e-1, "eps": 1e-7}]
    assert steps[:4] == [64, 64, 22, 40]  # three batches, the last partial, then the held-out loss
    assert fit.epochs == fit.best_epoch + 3 < 50  # stopped two epochs after the best
    with torch.no_grad():
        assert real(fit.head(held[0]), held[1]).item() == pytest.approx(fit.holdout_loss)  # the best weights
    monkeypatch.undo()
    again = fit_probe((x, y), held, num_classes=3, lr=1e-1, batch_size=64, max_epochs=50, patience=2, seed=3)
    assert torch.equal(again.head.weight, fit.head.weight)  # a function of the seed
    capped = fit_probe((x, y), (x, y), num_classes=3, lr=1e-2, batch_size=64, max_epochs=3, patience=2, seed=3)
    assert capped.epochs == 3 and capped.best_epoch == 2


def test_fine_tuning_keeps_batchnorm_in_inference_mode():
    import timm

    import gssl_fast.model.keras_resnet  # noqa: F401 (registers resnet38v2_cifar)
    from gssl_fast.methods.simclr.models import ContrastiveModel, FineTuned
    from gssl_fast.model.network import InputNormalize

    backbone = timm.create_model("resnet8_cifar", num_classes=0)
    encoder = ContrastiveModel(backbone, InputNormalize((0.5,) * 3, (0.25,) * 3))
    model = FineTuned(encoder, 10, bn_eval=True).train()
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert model.training and bns and not any(b.training for b in bns)
    before = [b.running_mean.clone() for b in bns]
    loss = model(torch.rand(8, 3, 16, 16))["logits"].logsumexp(1).mean()
    loss.backward()
    assert all(torch.equal(a, b.running_mean) for a, b in zip(before, bns))  # statistics never updated
    assert all(b.weight.grad is not None for b in bns)  # scale and shift still train
    assert all(b.training for b in FineTuned(encoder, 10).train().backbone.modules()
               if isinstance(b, torch.nn.BatchNorm2d))  # the standard protocol trains them


def test_the_random_subset_is_not_balanced_and_never_held_out():
    from gssl_fast.config import recipe_from_dict
    from gssl_fast.methods import MethodContext

    labels = np.repeat(np.arange(10), [400, 300, 200, 100, 100, 100, 100, 100, 100, 100])
    recipe = recipe_from_dict({"method": {"name": "simclr", "finetune_subset": "random"}, "pretext": {"tasks": []}},
                              "test")
    ctx = MethodContext.of(recipe, np.bincount(labels), (0.5,) * 3, (0.25,) * 3, train_labels=labels)
    picked = finetune_positions(recipe.method, ctx)
    assert len(picked) == 160 and len(set(picked)) == 160  # 10% of all 1600, drawn without replacement
    assert not set(picked) & set(linear_split(recipe.method, ctx)[1])
    counts = np.bincount(labels[picked], minlength=10)
    assert counts.max() > 2 * counts.min()  # as drawn, not the same number per class
    balanced = finetune_positions(dataclasses.replace(recipe.method, finetune_subset="balanced"), ctx)
    assert np.bincount(labels[balanced], minlength=10).tolist() == [16] * 10


# ------------------------------------------------------------------ every stage
@pytest.mark.slow
def test_every_stage_of_the_authors_recipe_runs(tmp_path, monkeypatch):
    import sklearn.cluster

    n_inits, real = [], sklearn.cluster.KMeans

    def kmeans(**kw):
        n_inits.append(kw.get("n_init"))
        return real(**kw)

    monkeypatch.setattr(sklearn.cluster, "KMeans", kmeans)
    run = tmp_path / "run"
    assert main([str(RECIPES / "cifar10_gsimclr_authors.toml"), "--out", str(run), *sets(*TINY)]) == 0
    rows = rows_of(run)
    names = [r["stage"] for r in rows]
    assert names[names.index("cluster"):] == ["cluster", "pretrain", "linear", "finetune_head", "finetune",
                                              "finetune", "finetune"]
    assert 1 <= names.count("autoencoder") <= 3 and n_inits == [10]
    for stage in ("autoencoder", "cluster", "pretrain", "linear", "finetune_head", "finetune"):
        assert (stage_dir(run, stage) / DONE).is_file(), stage
    ae = [r for r in rows if r["stage"] == "autoencoder"]
    assert all("holdout_mse" in r for r in ae) and ae[0]["train_images"] == 224  # the 256 less the held out, by 32
    state = torch.load(sorted((stage_dir(run, "autoencoder") / "checkpoints").iterdir())[-1], weights_only=True)
    widths = [v.shape[0] for k, v in state["model"].items() if k.startswith("decoder.") and v.dim() == 4]
    assert widths == [128, 64, 32] and np.load(stage_dir(run, "autoencoder") / "codes.npy").shape == (256, 128)
    pre = next(r for r in rows if r["stage"] == "pretrain")
    assert pre["lr"] == pytest.approx(0.1 * cosine_restarts(8, 2))  # after 8 steps: restarts at 2, 6, 14
    linear = next(r for r in rows if r["stage"] == "linear")
    for d in ("p1", "p2", "p3"):
        assert 1 <= linear[f"trained_{d}_epochs"] <= 3 and linear[f"selected_{d}_acc1"] == linear[f"val_{d}_acc1"]
    head = next(r for r in rows if r["stage"] == "finetune_head")
    assert {"head_holdout_acc1", "head_val_acc1", "head_selected_epoch"} <= set(head)
    finetune = [r for r in rows if r["stage"] == "finetune"]
    assert [r["epoch"] for r in finetune] == [0, 1, 2] and all("holdout_loss" in r for r in finetune)
    check_the_two_fine_tuning_phases(run, finetune[-1])


def check_the_two_fine_tuning_phases(run: Path, last: dict) -> None:
    """Phase 2 starts from phase 1's head, trains everything with Adam at finetune_lr on the
    random subset without augmentation, BatchNorm statistics those of pretraining; the run
    exports the kept weights."""
    from gssl_fast.analysis.inference import load_run
    from gssl_fast.evaluate import evaluate_run
    from gssl_fast.methods.simclr.protocol import AuthorsFinetune

    recipe, stage, state = load_run(run)
    assert isinstance(stage, AuthorsFinetune) and stage.model.bn_eval
    assert stage.early_stop() is False and stage.stopper.best_epoch == last["selected_epoch"]
    tuned = stage.stage_sections(recipe)
    assert (tuned.optim.name, tuned.optim.lr, tuned.optim.schedule, tuned.optim.weight_decay) == (
        "adam", 1e-5, "constant", 0.0)
    assert tuned.train.batch_size == 8 and tuned.train.epochs == 3
    pretrained = torch.load(sorted((stage_dir(run, "pretrain") / "checkpoints").iterdir())[-1], weights_only=True)
    for key, value in state["model"].items():
        if "running_" in key:  # BatchNorm in inference mode throughout phase 2
            assert torch.equal(value, pretrained["model"][key]), key
    first = torch.load(stage_dir(run, "finetune_head") / HEAD, weights_only=True)["head"]
    assert first["weight"].shape == state["model"]["head.weight"].shape
    assert evaluate_run(run)["acc1"] == pytest.approx(last["finetune_acc1"])


@pytest.mark.slow
def test_fine_tuning_stops_early_and_a_resume_does_not_train_on(tmp_path, capsys):
    """An lr too small to move the weights: the held-out loss never gets lower after epoch 0,
    so phase 2 stops after patience = 2 more epochs; continuing the run trains no further."""
    run = tmp_path / "run"
    tiny = sets(*TINY, "method.finetune_epochs=6", "method.finetune_lr=1e-30", "method.linear_epochs=1")
    recipe = str(RECIPES / "cifar10_simclr_authors.toml")
    assert main([recipe, "--out", str(run), *tiny]) == 0
    assert "stopped early after 3 of 6 epochs" in capsys.readouterr().out
    finetune = [r for r in rows_of(run) if r["stage"] == "finetune"]
    assert [r["epoch"] for r in finetune] == [0, 1, 2] and finetune[-1]["selected_epoch"] == 0
    assert finetune[-1]["finetune_acc1"] == finetune[0]["val_acc1"]
    (stage_dir(run, "finetune") / DONE).unlink()
    assert main([recipe, "--out", str(run), "--resume", "auto", *tiny]) == 0
    assert "stopped early after 3 of 6 epochs" in capsys.readouterr().out
    assert [r["epoch"] for r in rows_of(run) if r["stage"] == "finetune"] == [0, 1, 2]
    assert (stage_dir(run, "finetune") / DONE).is_file()
