"""kill -9 at named points of a run (gssl_fast.faults): every time ``--resume auto``
continues and the run ends bit-identical to an unbroken one, metrics included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.crash_points import ARGS, final, same, train
from gssl_fast.checkpoint import stage_dir
from tests.gssl_fast.tiny import write_tiny

ROOT = Path(__file__).resolve().parents[2]
# (point, passage): loaders built; a step of the first and of the second epoch; inside the
# first evaluation; the second checkpoint's bytes written but not renamed.
POINTS = [("data", 1), ("step", 2), ("step", 7), ("evaluate", 1), ("checkpoint", 2)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crashes")
    recipe = write_tiny(folder)
    assert train(recipe, folder / "straight", *ARGS).returncode == 0
    return recipe, final(folder / "straight")


@pytest.mark.slow
@pytest.mark.parametrize("point, nth", POINTS)
def test_a_run_killed_anywhere_resumes_to_the_same_end(tmp_path, straight, point, nth):
    recipe, (weights, rows) = straight
    out = tmp_path / "run"
    killed = train(recipe, out, *ARGS, crash=f"{point}:{nth}")
    assert killed.returncode == -9, killed.stderr[-2000:]
    kept = sorted((out / "checkpoints").glob("epoch_*.pt"))
    resumed = train(recipe, out, *ARGS, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # From the newest checkpoint; a run killed before its first one starts over.
    assert (f"resumed from {kept[-1]}" in resumed.stdout) if kept else ("resumed from" not in resumed.stdout)
    assert same(final(out), (weights, rows)), point
    assert not list((out / "checkpoints").glob(".*.tmp"))  # a half-written checkpoint is cleared


@pytest.mark.slow
def test_a_run_killed_between_stages_resumes_to_the_same_end(tmp_path):
    small = ["data.train_size=512", "data.val_size=64", "data.image_size=16", "train.epochs=1", "train.num_threads=1",
             "method.ae_epochs=1", "method.linear_epochs=1", "method.finetune_epochs=1", "method.clusters=8",
             "train.batch_size=32", "method.ae_batch_size=64"]
    args = [a for s in small for a in ("--set", s)]
    recipe = ROOT / "recipes" / "shapes_gsimclr.toml"
    assert train(recipe, tmp_path / "straight", *args).returncode == 0
    killed = train(recipe, tmp_path / "run", *args, crash="stage:2")  # after the cluster stage
    assert killed.returncode == -9
    assert train(recipe, tmp_path / "run", *args, "--resume", "auto").returncode == 0
    for stage in ("pretrain", "linear", "finetune"):
        a = final(stage_dir(tmp_path / "straight", stage))[0]
        b = final(stage_dir(tmp_path / "run", stage))[0]
        assert all(torch.equal(a[k], b[k]) for k in a), stage
    assert final(tmp_path / "straight")[1] == final(tmp_path / "run")[1]  # the run's metrics.jsonl


@pytest.mark.slow
def test_a_ladder_whose_runs_are_killed_resumes_to_the_same_table(tmp_path, monkeypatch):
    """Every row's training killed mid-run (the ladder says which failed), then the ladder
    rerun: each row continues from its checkpoint and ends as in an unbroken ladder."""
    from gssl_fast.ladder import main as ladder

    table = ROOT / "recipes" / "tables" / "short_table2.toml"
    sets = ["data.name=shapes", "data.root=", "data.image_size=16", "data.train_size=128", "data.val_size=64",
            "data.mean=[]", "data.std=[]", "model.backbone=resnet8_cifar", "train.epochs=2", "train.batch_size=32",
            "train.global_batch_size=0", "train.eval_batch_size=64", "train.steps_per_epoch=2", "train.num_threads=1"]
    rows = ["lorot-e"]
    args = [str(table), "--rows", *rows, *[a for s in sets for a in ("--set", s)]]
    monkeypatch.delenv("GSSL_FAST_CRASH_AT", raising=False)
    assert ladder([*args, "--out", str(tmp_path / "straight")]) == 0
    monkeypatch.setenv("GSSL_FAST_CRASH_AT", "step:3")  # in epoch 2, after the first checkpoint
    assert ladder([*args, "--out", str(tmp_path / "killed")]) == 1
    monkeypatch.delenv("GSSL_FAST_CRASH_AT")
    assert ladder([*args, "--out", str(tmp_path / "killed")]) == 0
    for row in rows:
        a, b = final(tmp_path / "straight" / row), final(tmp_path / "killed" / row)
        assert same(a, b), row
