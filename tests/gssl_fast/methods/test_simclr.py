"""SimCLR and G-SimCLR in stages: every stage on the built-in data, the files each
leaves, skipping and resuming stages, --stage, and a two-process guided pretraining whose
global batches obey the plan."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gssl_fast.config import load_recipe
from gssl_fast.checkpoint import stage_dir
from gssl_fast.run.stages import DONE
from gssl_fast.train import main

ROOT = Path(__file__).resolve().parents[3]
STAGES = ("autoencoder", "cluster", "pretrain", "linear", "finetune")
RECIPES = ROOT / "recipes"
# recipes/shapes_gsimclr.toml, smaller still: 16 steps of pretraining, 2 epochs elsewhere.
SMALL = ["data.train_size=512", "data.val_size=128", "data.image_size=16", "train.epochs=2", "train.num_threads=1",
         "method.ae_epochs=1", "method.linear_epochs=2", "method.finetune_epochs=2", "method.clusters=16",
         "train.batch_size=32", "method.ae_batch_size=64"]


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_state(run: Path, stage: str) -> dict:
    last = sorted((stage_dir(run, stage) / "checkpoints").iterdir())[-1]
    return torch.load(last, weights_only=True)["model"]


def test_the_recipes_load():
    for name, guided in (("cifar10_simclr", False), ("cifar10_gsimclr", True), ("shapes_gsimclr", True),
                         ("imagefolder_gsimclr", True)):
        r = load_recipe(RECIPES / f"{name}.toml")
        assert r.method.name == "simclr" and r.method.guided is guided
    r = load_recipe(RECIPES / "cifar10_gsimclr.toml")
    assert r.model.backbone == "resnet20_cifar" and r.method.projection == (256, 128, 50)
    assert r.method.temperature == 0.1 and r.train.global_batch_size == 64


@pytest.mark.slow
def test_every_stage_runs_skips_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    recipe = str(RECIPES / "shapes_gsimclr.toml")
    assert main([recipe, "--out", str(run), *sets(*SMALL)]) == 0
    printed = capsys.readouterr().out
    assert "stage pretrain" in printed and "heads" not in printed and "gate" not in printed  # no G-SSL part
    rows = rows_of(run)
    assert [r["stage"] for r in rows] == ["autoencoder", "cluster", "pretrain", "pretrain", "linear", "linear",
                                          "finetune", "finetune"]
    for name in ("autoencoder", "cluster", "pretrain", "linear", "finetune"):
        assert (stage_dir(run, name) / DONE).is_file()
    codes = np.load(stage_dir(run, "autoencoder") / "codes.npy")
    pseudo = np.load(stage_dir(run, "cluster") / "pseudo_labels.npy")
    assert codes.shape == (512, 128) and pseudo.shape == (512,) and pseudo.max() < 16
    assert json.loads((stage_dir(run, "cluster") / "clusters.json").read_text())["k"] == 16
    pre = [r for r in rows if r["stage"] == "pretrain"]
    assert all(0 <= r["val_knn_acc1"] <= 100 for r in pre)
    assert all(r["guided_max_repeat"] >= 1 and r["guided_in_plan"] == 1.0 and r["guided_excess"] == 0.0 for r in pre)
    linear = [r for r in rows if r["stage"] == "linear"][-1]
    assert {"selected_p1_acc1", "selected_p2_acc1", "selected_p3_acc1", "holdout_p3_acc1"} <= set(linear)

    # The run's classifier is the fine-tuned model: load_model and gssl_fast.evaluate find it.
    from gssl_fast.evaluate import evaluate_run
    from gssl_fast.analysis.inference import load_model
    from pipelines.datasets.shapes import CLASSES

    finetune = [r for r in rows if r["stage"] == "finetune"][-1]
    assert evaluate_run(run)["acc1"] == pytest.approx(finetune["val_acc1"])
    assert load_model(run)(torch.rand(2, 3, 16, 16)).shape == (2, len(CLASSES))

    # A finished run: every stage is skipped.
    capsys.readouterr()
    assert main([recipe, "--out", str(run), "--resume", "auto", *sets(*SMALL)]) == 0
    assert capsys.readouterr().out.count("done, skipped") == 5 and len(rows_of(run)) == len(rows)

    # An interrupted stage (its last checkpoint and marker gone, the later stages not run)
    # resumes to the same weights, and the stages after it are redone identically.
    trained = ("autoencoder", "pretrain", "linear", "finetune")
    for name in trained:
        before = {s: final_state(run, s) for s in trained}
        folder = stage_dir(run, name)
        (folder / DONE).unlink()
        sorted((folder / "checkpoints").iterdir())[-1].unlink()
        for later in STAGES[STAGES.index(name) + 1:]:
            shutil.rmtree(stage_dir(run, later))
        assert main([recipe, "--out", str(run), "--resume", "auto", *sets(*SMALL)]) == 0
        for s, state in before.items():
            after = final_state(run, s)
            assert all(torch.equal(state[k], after[k]) for k in state), (name, s)
        assert np.array_equal(np.load(stage_dir(run, "cluster") / "pseudo_labels.npy"), pseudo)
        assert [r["stage"] for r in rows_of(run)] == [r["stage"] for r in rows]  # redone epochs replaced their lines
        assert [r.get("selected_p1_acc1") for r in rows_of(run)] == [r.get("selected_p1_acc1") for r in rows]

    # --stage reruns one stage; a stage whose predecessors are not done is refused.
    assert main([recipe, "--out", str(run), "--stage", "cluster", *sets(*SMALL)]) == 0
    assert np.array_equal(np.load(stage_dir(run, "cluster") / "pseudo_labels.npy"), pseudo)
    other = tmp_path / "other"
    assert main([recipe, "--out", str(other), "--stage", "pretrain", *sets(*SMALL)]) == 2
    assert "not done yet: autoencoder, cluster" in capsys.readouterr().err


@pytest.mark.slow
def test_plain_simclr_has_no_guided_stages(tmp_path):
    run = tmp_path / "run"
    assert main([str(RECIPES / "shapes_gsimclr.toml"), "--out", str(run),
                 *sets(*SMALL, "method.guided=false")]) == 0
    assert [r["stage"] for r in rows_of(run)][::2] == ["pretrain", "linear", "finetune"]
    assert "guided_max_repeat" not in rows_of(run)[0]


@pytest.mark.slow
def test_two_process_guided_pretraining_obeys_the_plan(tmp_path):
    """Every global batch of 2 x 16 images, gathered from the two processes' batch
    indices, holds each of the 32 pseudo-labels at most once."""
    run = tmp_path / "run"
    small = [s for s in SMALL if not s.startswith(("train.batch_size", "method.clusters"))]
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port", "29547",
           "-m", "gssl_fast.train", str(RECIPES / "shapes_gsimclr.toml"), "--out", str(run),
           *sets(*small, "train.batch_size=16", "method.clusters=0")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = rows_of(run)
    assert json.loads((stage_dir(run, "cluster") / "clusters.json").read_text())["k"] == 32  # the global batch
    pre = [r for r in rows if r["stage"] == "pretrain"]
    assert [r["world_size"] for r in pre] == [2, 2] and all(r["replicas_in_sync"] for r in pre)
    assert all(r["guided_in_plan"] == 1.0 and r["guided_excess"] == 0.0 for r in pre)


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["dali", "ffcv"])
def test_every_stage_runs_with_the_other_loaders(tmp_path, loader):
    """The guided plan and the two views (torch ops after the backend) in DALI and FFCV."""
    run = tmp_path / "run"
    assert main([str(RECIPES / "shapes_gsimclr.toml"), "--out", str(run),
                 *sets(*SMALL, f"train.loader={loader}")]) == 0
    pre = [r for r in rows_of(run) if r["stage"] == "pretrain"]
    assert len(pre) == 2 and all(r["guided_in_plan"] == 1.0 and r["guided_excess"] == 0.0 for r in pre)
    assert (stage_dir(run, "finetune") / DONE).is_file()


def test_a_stage_without_a_full_step_is_refused_before_the_first_stage(tmp_path, capsys):
    """The fine-tuning subset (10% of 400 images = 40) is smaller than the batch (64):
    named with its stage, size and key before the autoencoder starts; no folder made."""
    run = tmp_path / "run"
    assert main([str(RECIPES / "shapes_gsimclr.toml"), "--out", str(run), *sets("data.train_size=400")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: stage finetune: train.batch_size = 64") and "\n" not in err
    assert "40 images" in err and "method.finetune_fraction = 0.1" in err
    assert not run.exists()


def test_more_clusters_than_images_is_refused_before_the_first_stage(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([str(RECIPES / "shapes_gsimclr.toml"), "--out", str(run), *sets(*SMALL, "method.clusters=600")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: stage cluster: method.clusters = 600 is more than the 512 training images")
    assert not run.exists()


@pytest.mark.slow
def test_stage_reruns_that_stage_and_each_stage_keeps_its_recipe(tmp_path, capsys):
    run = tmp_path / "run"
    recipe = str(RECIPES / "shapes_gsimclr.toml")
    small = sets(*SMALL, "method.guided=false")
    assert main([recipe, "--out", str(run), *small]) == 0
    finetuned = final_state(run, "finetune")
    summary = capsys.readouterr().out.split(f"finished {run}")[1].splitlines()
    assert "(stage finetune)" in summary[0] and "after 2 epochs" in summary[0]
    assert summary[1].split() == ["checkpoint", str(stage_dir(run, "finetune") / "checkpoints" / "epoch_0002.pt")]
    assert main([recipe, "--out", str(run), *small, "--stage", "finetune", "--set", "method.finetune_lr=0.01"]) == 0
    out = capsys.readouterr().out
    assert "rerunning stage finetune with changed settings: method.finetune_lr 0.05 -> 0.01" in out
    assert "already finished" not in out
    again = final_state(run, "finetune")
    assert not all(torch.equal(finetuned[k], again[k]) for k in again)  # trained anew, at the new lr
    assert [r["stage"] for r in rows_of(run)] == ["pretrain"] * 2 + ["linear"] * 2 + ["finetune"] * 2
    assert load_recipe(stage_dir(run, "finetune") / "config.toml").method.finetune_lr == 0.01
    assert load_recipe(stage_dir(run, "linear") / "config.toml").method.finetune_lr == 0.05
    assert load_recipe(run / "config.toml").method.finetune_lr == 0.01

    # --stage linear reruns linear and marks finetune (built after it) as to be rerun.
    assert main([recipe, "--out", str(run), *small, "--stage", "linear", "--set", "method.finetune_lr=0.01"]) == 0
    assert "still to run: finetune (continue the run with --resume auto)" in capsys.readouterr().out
    assert not stage_dir(run, "finetune").exists()
    assert [r["stage"] for r in rows_of(run)] == ["pretrain"] * 2 + ["linear"] * 2
    # Continuing the run with other settings names the done stages they did not train.
    capsys.readouterr()
    assert main([recipe, "--out", str(run), *small, "--resume", "auto", "--set", "method.finetune_lr=0.02",
                 "--set", "method.linear_lr=0.2"]) == 0
    out = capsys.readouterr().out
    assert ("stage linear: done, skipped (trained with other settings: method.linear_lr 0.1 -> 0.2; "
            "method.finetune_lr 0.01 -> 0.02; rerun it with --stage linear)") in out
    assert load_recipe(stage_dir(run, "finetune") / "config.toml").method.finetune_lr == 0.02
