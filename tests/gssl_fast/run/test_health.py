"""A loss that is no longer a number stops the run at once, naming where, and leaves no
checkpoint of the broken epoch."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator

from pipelines.errors import UserError
from gssl_fast.run.health import LossGuard
from gssl_fast.train import main
from tests.gssl_fast.tiny import write_tiny


def test_the_guard_names_the_first_bad_step_and_its_terms():
    guard = LossGuard(["loss", "loss_x"], epoch=2, accelerator=Accelerator(cpu=True), every=10)
    for step, loss in enumerate([1.0, 0.5, 0.7]):
        guard.observe(step, torch.tensor([loss, loss / 2]))
    guard.check()  # all finite: nothing to say
    guard.observe(3, torch.tensor([math.inf, 3.0]))
    with pytest.raises(UserError, match=r"epoch 3, step 4 \(loss inf, loss_x 3\)"):
        guard.check()


def test_the_guard_looks_on_its_own_every_few_steps():
    guard = LossGuard(["loss"], epoch=0, accelerator=Accelerator(cpu=True), every=3)
    guard.observe(0, torch.tensor([float("nan")]))
    guard.observe(1, torch.tensor([float("nan")]))
    with pytest.raises(UserError, match="step 1 "):
        guard.observe(2, torch.tensor([1.0]))


def test_a_diverging_run_stops_with_status_2_and_no_checkpoint(tmp_path, capsys):
    recipe = write_tiny(tmp_path, after="steps_per_epoch = 12")
    out = tmp_path / "run"
    assert main([str(recipe), "--out", str(out), "--set", "optim.lr=1e9", "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "the loss is not finite at epoch 1, step" in err and "loss_cls" in err
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    assert not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").read_text() == ""


class Poisoned:
    """Makes the supervised step's loss NaN (and its BatchNorm statistics) at the given
    (0-based) batches of a run."""

    def __init__(self, monkeypatch, bad_steps):
        from gssl_fast.methods.supervised.method import Supervised

        real, self.step, self.bad = Supervised.training_step, 0, set(bad_steps)

        def training_step(method, model, batches, *, accelerator):
            out = real(method, model, batches, accelerator=accelerator)
            if self.step in self.bad:  # as an overflowing forward: a NaN loss, broken BatchNorm statistics
                out["loss"] = out["loss"] * float("nan")
                for m in method.model.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.running_mean.data.fill_(float("nan"))  # .data: not a change autograd sees
            self.step += 1
            return out

        monkeypatch.setattr(Supervised, "training_step", training_step)


def test_skip_leaves_out_the_steps_whose_loss_is_not_finite_and_counts_them(tmp_path, monkeypatch, capsys):
    import json

    Poisoned(monkeypatch, bad_steps={1, 4, 5})
    recipe = write_tiny(tmp_path, after='steps_per_epoch = 4\nnonfinite = "skip"')
    out = tmp_path / "run"
    assert main([str(recipe), "--out", str(out), "--set", "train.epochs=2"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_steps"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) and r["train_loss"] > 0 for r in rows)
    assert "skipped 2 steps whose loss was not finite" in capsys.readouterr().out
    weights = torch.load(out / "checkpoints" / "epoch_0002.pt", weights_only=True)["model"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_skip_stops_when_every_step_of_an_epoch_is_skipped(tmp_path, monkeypatch, capsys):
    Poisoned(monkeypatch, bad_steps=range(100))
    recipe = write_tiny(tmp_path, after='steps_per_epoch = 3\nnonfinite = "skip"')
    assert main([str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "every step of epoch 1 had gradients that are not finite" in capsys.readouterr().err


def test_skip_leaves_out_a_whole_accumulation_window(tmp_path, monkeypatch):
    import json

    Poisoned(monkeypatch, bad_steps={3})  # the second batch of the second window
    recipe = write_tiny(tmp_path, after='steps_per_epoch = 3\ngrad_accum_steps = 2\nnonfinite = "skip"')
    out = tmp_path / "run"
    assert main([str(recipe), "--out", str(out), "--set", "train.batch_size=16"]) == 0
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["nonfinite_steps"] == 2 and math.isfinite(row["train_loss"])  # batches of the skipped step
