"""gssl_fast.load_model: a run folder or checkpoint in, pixels -> logits out."""

from __future__ import annotations

import json

import pytest
import torch

import gssl_fast
from gssl_fast.evaluate import main as evaluate_main
from gssl_fast.train import main
from pipelines.datasets import make_shapes
from tests.gssl_fast.tiny import write_tiny

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inference")
    recipe = write_tiny(tmp)
    assert main([str(recipe), "--out", str(tmp / "run"), "--set", "train.epochs=2",
                 "--set", "data.mean=[0.4, 0.5, 0.6]", "--set", "data.std=[0.2, 0.25, 0.3]"]) == 0
    return tmp / "run"


def test_load_model_gives_the_runs_accuracy_on_float_pixels(run):
    model = gssl_fast.load_model(run)
    assert not model.training
    val = make_shapes(64, image_size=16, split="val")
    pixels = torch.from_numpy(val.images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        logits = model(pixels)
    assert logits.shape == (64, 10)
    acc = 100.0 * (logits.argmax(1).numpy() == val.labels).mean()
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert acc == pytest.approx(last["val_acc1"])
    norm = model.model.normalize
    assert norm.mean.flatten().tolist() == pytest.approx([0.4, 0.5, 0.6])  # carried by the checkpoint


def test_checkpoint_file_and_folder_give_the_same_model(run):
    x = torch.rand(4, 3, 16, 16)
    a = gssl_fast.load_model(run)(x)
    b = gssl_fast.load_model(run / "checkpoints" / "epoch_0002.pt")(x)
    c = gssl_fast.load_model(run / "checkpoints" / "epoch_0001.pt")(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_evaluate_command_prints_one_line_per_metric(run, capsys):
    assert evaluate_main([str(run)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["acc1", "acc5"]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert float(lines[0].split()[1]) == pytest.approx(last["val_acc1"], abs=0.01)


def test_a_folder_without_checkpoints_is_a_user_error(tmp_path, capsys):
    assert evaluate_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err
