"""FixMatch + G-SSL: the labeled subset, the consistency term, the EMA, the step's
scalars, and the paper's recipes on every loader, resumed and on two processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from bench.crash_points import train
from gssl_fast.config import load_recipe
from gssl_fast.methods import MethodContext, build_method
from gssl_fast.methods.fixmatch.method import LABELED_FILE, read_positions, unlabeled_loss
from pipelines.sampling import balanced_subset
from gssl_fast.train import main
from pipelines import make_loader
from pipelines.datasets import make_shapes
from pipelines.errors import UserError
from tests.gssl_fast.methods.shapes import on_shapes

ROOT = Path(__file__).resolve().parents[3]
RECIPES = ROOT / "recipes"
# The paper's recipes on the built-in data: 4 labels per class, 64 unlabeled images a step.
FIXMATCH_ON_SHAPES = ("method.num_labels=40", "method.mu=2", "model.kwargs={}", "train.steps=0")


def test_labeled_subset_is_balanced_and_deterministic():
    labels = np.random.default_rng(0).integers(0, 10, 5000)
    a = balanced_subset(labels, 400, 10, seed=3)
    assert len(a) == 400 and len(np.unique(a)) == 400 and (np.diff(a) > 0).all()
    assert (np.bincount(labels[a], minlength=10) == 40).all()
    assert np.array_equal(a, balanced_subset(labels, 400, 10, seed=3))
    assert not np.array_equal(a, balanced_subset(labels, 400, 10, seed=4))
    with pytest.raises(ValueError, match="evenly"):
        balanced_subset(labels, 405, 10, seed=0)
    with pytest.raises(ValueError, match="fewer than"):
        balanced_subset(np.zeros(50, dtype=int), 20, 2, seed=0)


def test_labels_file_is_read_and_checked(tmp_path):
    good = tmp_path / "labels.txt"
    good.write_text("# positions\n3\n7\n11\n")
    assert read_positions(str(good), 20).tolist() == [3, 7, 11]
    for text, needle in (("3\n3\n", "twice"), ("3\n99\n", "outside"), ("three\n", "one integer"), ("", "no positions")):
        good.write_text(text)
        with pytest.raises(UserError, match=needle) as e:
            read_positions(str(good), 20)
        assert str(good) in str(e.value)
    with pytest.raises(UserError, match="cannot read"):
        read_positions(str(tmp_path / "missing.txt"), 20)


def test_mask_and_unlabeled_loss_match_a_hand_computation():
    weak = torch.tensor([[4.0, 0.0, 0.0], [0.5, 0.4, 0.3], [0.0, 0.0, 9.0]])
    strong = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    out = unlabeled_loss(weak, strong, tau=0.95)
    # softmax([4, 0, 0]) tops at e^4 / (e^4 + 2) = 0.9647 >= 0.95; the second row at 0.367; the third at 0.9998.
    assert out["mask"].tolist() == [1.0, 0.0, 1.0] and out["pseudo"].tolist() == [0, 0, 2]
    ce0 = -math.log(math.e ** 1 / (math.e ** 1 + math.e ** 2 + 1))
    ce2 = -math.log(math.e / (1 + 2 * math.e))
    assert out["loss_u"].item() == pytest.approx((ce0 + ce2) / 3, rel=1e-6)
    grad_weak = weak.clone().requires_grad_()
    unlabeled_loss(grad_weak, strong.requires_grad_(), 0.95)["loss_u"].backward()
    assert grad_weak.grad is None and strong.grad is not None  # pseudo-labels carry no gradient


def fixmatch_method(tiny_recipe, extra: str = ""):
    recipe = load_recipe(tiny_recipe(f'[method]\nname = "fixmatch"\nnum_labels = 40\nmu = 2\n{extra}'))
    ds = make_shapes(128, image_size=16)
    ctx = MethodContext.of(recipe, np.bincount(ds.labels, minlength=10), (0.5,) * 3, (0.25,) * 3,
                           train_labels=ds.labels)
    return recipe, ds, build_method(recipe.method, ctx)


def step_batches(method, ds):
    return {name: next(iter(make_loader(ds, batch_size=s.batch_size, views=s.views, subset=s.indices,
                                        normalize=False, device="cpu", seed=i)))
            for i, (name, s) in enumerate(method.streams().items())}


def test_streams_views_and_step_scalars(tiny_recipe):
    recipe, ds, method = fixmatch_method(tiny_recipe)
    streams = method.streams()
    assert list(streams) == ["labeled", "unlabeled"]
    assert streams["labeled"].batch_size == 32 and streams["unlabeled"].batch_size == 64
    assert len(streams["labeled"].indices) == 40 and streams["unlabeled"].indices is None
    batches = step_batches(method, ds)
    assert set(batches["labeled"]["indices"].tolist()) <= set(streams["labeled"].indices.tolist())
    assert {"weak", "strong", "strong/target_rotation"} <= set(batches["unlabeled"])
    assert "weak/target_rotation" not in batches["unlabeled"]  # the pseudo-labeller stays untransformed
    torch.manual_seed(0)
    out = method.training_step(method.model, batches, accelerator=Accelerator(cpu=True))
    assert out["loss"].requires_grad
    assert {"loss_x", "loss_u", "loss_ssl", "mask_rate", "pseudo_acc", "gate/rotation", "pretext_acc/perm"} <= set(out)
    assert 0 <= out["mask_rate"].item() <= 1 and 0 <= out["pseudo_acc"].item() <= 100
    lam, lu = recipe.pretext.lam, recipe.method.lambda_u
    expect = out["loss_x"] + lu * out["loss_u"] + lam * out["loss_ssl"]
    assert out["loss"].item() == pytest.approx(expect.item(), rel=1e-5)


def test_ema_update_follows_the_decay(tiny_recipe):
    _, ds, method = fixmatch_method(tiny_recipe, "ema_decay = 0.9\n")
    method.on_epoch_start(0)
    before = {k: v.clone() for k, v in method.ema.module.state_dict().items()}
    opt = torch.optim.SGD(method.model.parameters(), lr=0.5)
    method.model.train()
    out = method.training_step(method.model, step_batches(method, ds), accelerator=Accelerator(cpu=True))
    out["loss"].backward()
    opt.step()
    method.on_optimizer_step(method.model)
    ema = dict(method.ema.module.named_parameters())
    for name, p in method.model.named_parameters():
        torch.testing.assert_close(ema[name], 0.9 * before[name] + 0.1 * p.detach(), rtol=1e-6, atol=1e-7)
    for (name, b), mine in zip(method.model.named_buffers(), method.ema.module.buffers()):
        assert torch.equal(mine, b), name  # BatchNorm statistics are copied, as the reference ports do
    assert method.eval_model() is method.ema.module
    assert set(method.state_dict()["ema"]) == set(method.model.state_dict())


def test_recipe_checks(tiny_recipe):
    for bad, key in (("tau = 1.5", "method.tau"), ("mu = 0", "method.mu"), ("ema_decay = 1.0", "method.ema_decay"),
                     ('padding_mode = "edge"', "method.padding_mode")):
        with pytest.raises(UserError, match=key):
            load_recipe(tiny_recipe(f'[method]\nname = "fixmatch"\n{bad}\n'))


def test_the_papers_recipes_load():
    for name, tasks in (("cifar10_fixmatch", ()), ("cifar10_fixmatch_gssl", ("rotation", "flip", "perm"))):
        r = load_recipe(RECIPES / f"{name}.toml")
        m = r.method
        assert (m.num_labels, m.mu, m.tau, m.lambda_u, m.ema_decay) == (4000, 7, 0.95, 1.0, 0.999)
        assert r.pretext.tasks == tasks and r.pretext.lam == 0.3
        assert r.model.backbone == "wrn28_2" and r.model.init == "xavier_linear"
        assert r.model.kwargs == {"leaky_slope": 0.1, "bn_momentum": 0.001, "raw_shortcuts": True}
        assert (r.data.mean, r.data.std) == ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))  # kekmodel's
        assert (r.optim.lr, r.optim.nesterov, r.optim.decay_bias_and_norm, r.optim.schedule) == (
            0.03, True, False, "fixmatch_cosine")
        assert (r.train.steps, r.train.steps_per_epoch, r.train.global_batch_size) == (1 << 20, 1024, 64)


def fixmatch_args(*extra: str) -> list[str]:
    return on_shapes(*FIXMATCH_ON_SHAPES, *extra)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["cifar10_fixmatch", "cifar10_fixmatch_gssl"])
@pytest.mark.parametrize("loader", ["torch", "dali", "ffcv"])
def test_the_papers_recipes_run_with_each_loader(tmp_path, recipe, loader):
    out = tmp_path / "run"
    assert main([str(RECIPES / f"{recipe}.toml"), "--out", str(out), *fixmatch_args(f"train.loader={loader}")]) == 0
    row = json.loads((out / "metrics.jsonl").read_text())
    assert {"loss_x", "loss_u", "mask_rate", "pseudo_acc", "val_acc1", "val_raw_acc1"} <= set(row)
    assert row["train_images"] == 2 * 32  # images of the main (labeled) stream: 2 steps of 32
    assert ("gate" in row) == recipe.endswith("gssl")
    labeled = np.loadtxt(out / LABELED_FILE, dtype=np.int64)
    assert len(labeled) == 40


def final_states(run: Path, epoch: int) -> dict:
    state = torch.load(run / "checkpoints" / f"epoch_{epoch:04d}.pt", weights_only=True)
    return {**{f"model.{k}": v for k, v in state["model"].items()},
            **{f"ema.{k}": v for k, v in state["method"]["ema"].items()}}


@pytest.mark.slow
def test_killed_run_resumes_bit_exact_with_two_streams_and_the_ema(tmp_path):
    recipe = str(RECIPES / "cifar10_fixmatch_gssl.toml")
    args = fixmatch_args("train.epochs=3", "train.steps_per_epoch=3")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main([recipe, "--out", str(straight), *args]) == 0
    # Killed after the first step of epoch 2 (its checkpoint and the EMA's written).
    assert train(recipe, killed, *args, crash="step:4").returncode == -signal.SIGKILL
    assert not (killed / "checkpoints" / "epoch_0002.pt").exists()
    assert main([recipe, "--out", str(killed), "--resume", "auto", *args]) == 0
    a, b = final_states(straight, 3), final_states(killed, 3)
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"


@pytest.mark.slow
def test_two_cpu_processes_stay_in_sync(tmp_path):
    out = tmp_path / "run"
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "gssl_fast.train", str(RECIPES / "cifar10_fixmatch_gssl.toml"), "--out", str(out),
           *fixmatch_args("train.batch_size=16", "train.epochs=2")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in rows] == [2, 2] and all(r["replicas_in_sync"] for r in rows)
