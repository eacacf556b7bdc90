"""A loss that is no longer a number stops the run at once, naming where, and leaves no
checkpoint of the broken epoch."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator

from gssl_fast.errors import UserError
from gssl_fast.health import LossGuard
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
