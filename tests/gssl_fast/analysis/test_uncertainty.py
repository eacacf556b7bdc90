"""Calibration and OOD scores (gssl_fast.analysis.uncertainty) against hand-computed cases,
and `python -m gssl_fast.evaluate RUN --calibration --ood SOURCE` on a trained run."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch

from gssl_fast.analysis.uncertainty import (
    calibration,
    fit_temperature,
    ood_metrics,
    ood_scores,
    pretext_score,
    transform_set,
)


def test_calibration_figures_by_hand():
    # Two images, two classes: probabilities (0.8, 0.2) right and (0.6, 0.4) wrong.
    logits = torch.tensor([[math.log(0.8), math.log(0.2)], [math.log(0.6), math.log(0.4)]])
    labels = torch.tensor([0, 1])
    got = calibration(logits, labels)
    # Bin (0.733, 0.8]: accuracy 1, confidence 0.8; bin (0.533, 0.6]: accuracy 0, confidence 0.6.
    assert got["ece"] == pytest.approx(100 * (0.5 * 0.2 + 0.5 * 0.6))
    assert got["nll"] == pytest.approx(-(math.log(0.8) + math.log(0.4)) / 2)
    assert got["brier"] == pytest.approx(((0.2**2 + 0.2**2) + (0.6**2 + 0.6**2)) / 2)
    assert sum(got["bins"]["count"]) == 2 and len(got["bins"]["count"]) == 15
    assert calibration(logits * 2, labels, temperature=2.0)["nll"] == pytest.approx(got["nll"])


def test_temperature_scaling_lowers_the_nll_of_an_over_confident_model():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (2000,), generator=gen)
    logits = torch.randn(2000, 10, generator=gen)
    logits[torch.arange(2000), labels] += 2.0  # right about 60 % of the time...
    logits *= 4  # ...and far too sure of itself
    t = fit_temperature(logits, labels)
    assert t > 2
    assert calibration(logits, labels, t)["nll"] < 0.8 * calibration(logits, labels)["nll"]
    assert calibration(logits, labels, t)["ece"] < calibration(logits, labels)["ece"]


def test_ood_metrics_by_hand():
    inside = np.arange(100, dtype=float)  # the in-distribution scores 0..99
    perfect = ood_metrics(inside, inside + 1000)
    assert perfect == {"auroc": 100.0, "aupr": 100.0, "fpr95": 0.0}
    mixed = ood_metrics(inside, np.array([50.0, 96.0, 200.0]))
    assert mixed["fpr95"] == pytest.approx(100 / 3)  # 50 falls below the 95th in-distribution score
    assert mixed["auroc"] == pytest.approx(100 * (50.5 + 96.5 + 100) / 300)  # a tie counts half


def test_scores_from_logits_and_the_pretext_score():
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    scores = ood_scores(logits, None)
    assert set(scores) == {"msp", "energy"}
    assert scores["msp"][1] == pytest.approx(0.5) and scores["msp"][0] < 0.1
    assert scores["energy"][1] == pytest.approx(-math.log(2))
    both = ood_scores(logits, torch.tensor([1.0, 2.0]))
    assert both["msp_pretext"][1] == pytest.approx(2 + math.log(2))


def test_the_transform_set_covers_each_trained_head():
    assert len(transform_set(["rotation"])) == 16
    assert len(transform_set(["rotation", "flip", "perm"])) == 16 + 4 + 20
    assert {t["perm"] for t in transform_set(["perm"])} == set(range(6))
    assert {t["flip"] for t in transform_set(["flip"])} == {0, 1}


def test_the_pretext_score_uses_every_enabled_head():
    from gssl_fast.model.task import build_task
    from gssl_fast.sections import LossConfig, ModelConfig, PretextConfig

    torch.manual_seed(0)
    model = build_task(ModelConfig(backbone="resnet8_cifar"), PretextConfig(), LossConfig(), num_classes=4,
                       class_counts=np.ones(4), mean=(0.5,) * 3, std=(0.25,) * 3).eval()
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    base = pretext_score(model, images)
    assert base.shape == (6,) and torch.isfinite(base).all()
    for task in model.tasks:
        head = model.heads.pretext[task]
        saved = [p.detach().clone() for p in head.parameters()]
        with torch.no_grad():
            for p in head.parameters():
                p.mul_(3.0).add_(0.1)
        assert not torch.allclose(pretext_score(model, images), base), task
        with torch.no_grad():
            for p, s in zip(head.parameters(), saved):
                p.copy_(s)


@pytest.mark.slow
def test_a_trained_gssl_run_separates_noise_and_calibrates(tmp_path, capsys):
    import gssl_fast
    from gssl_fast.evaluate import main as evaluate
    from gssl_fast.train import main as train
    from pipelines.datasets.testing import write_image_folder

    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\nname = "shapes"\nimage_size = 32\ntrain_size = 2000\nval_size = 400\n'
                      '[model]\nbackbone = "resnet8_cifar"\n[train]\nepochs = 12\nbatch_size = 64\n'
                      'eval_batch_size = 128\nnum_threads = 2\n')
    assert train([str(recipe), "--out", str(tmp_path / "run")]) == 0
    noise = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    write_image_folder(tmp_path / "noise", list(noise), np.arange(100) % 2)
    capsys.readouterr()
    assert evaluate([str(tmp_path / "run"), "--calibration", "--ood", str(tmp_path / "noise")]) == 0
    lines = dict(line.split() for line in capsys.readouterr().out.splitlines())
    for key in ("ece", "nll", "brier", "ece_calibrated", "nll_calibrated", "brier_calibrated", "temperature"):
        assert key in lines
    for score in ("msp", "energy", "pretext", "msp_pretext"):
        assert float(lines[f"ood_{score}_auroc"]) > 65, (score, lines)
    assert json.loads((tmp_path / "run" / "ood.json").read_text())[str(tmp_path / "noise")]["pretext"]["histogram"]
    model = gssl_fast.load_model(tmp_path / "run", calibrated=True)
    assert model.temperature == pytest.approx(float(lines["temperature"]), rel=1e-3)


def test_the_temperature_is_fitted_on_the_share_held_out_of_training(tmp_path, capsys):
    from gssl_fast.config import load_recipe
    from gssl_fast.evaluate import main as evaluate
    from gssl_fast.train import main as train
    from pipelines.datasets import load_dataset
    from tests.gssl_fast.tiny import write_tiny

    recipe = write_tiny(tmp_path)  # 128 training images of 4 classes, batches of 32
    held, plain = tmp_path / "held", tmp_path / "plain"
    assert train([str(recipe), "--out", str(held), "--set", "data.calibration_fraction=0.25"]) == 0
    assert train([str(recipe), "--out", str(plain)]) == 0
    trained = {run: json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["train_images"]
               for run in (held, plain)}
    assert trained == {held: 96, plain: 128}, "the held-out quarter is never trained on"
    capsys.readouterr()
    assert evaluate([str(held)]) == 0
    alone = capsys.readouterr().out.splitlines()
    assert evaluate([str(held), "--calibration"]) == 0
    printed = capsys.readouterr()
    assert "trained on" not in printed.err
    assert printed.out.splitlines()[:2] == alone, "the accuracy from the calibration pass is the plain one"
    share = len(load_dataset(dataclasses.replace(load_recipe(recipe).data, calibration_fraction=0.25), "calibration"))
    fitted = json.loads((held / "temperature.json").read_text())["fitted_on"]
    assert fitted.startswith(f"{share} training images held out of training"), fitted
    assert evaluate([str(plain), "--calibration"]) == 0
    printed = capsys.readouterr()
    assert re.search(r"fitted on \d+ training images the model trained on", printed.err)
    assert all(len(line.split()) == 2 for line in printed.out.splitlines()), "stdout: one metric a line"
    assert "the model trained on" in json.loads((plain / "temperature.json").read_text())["fitted_on"]
