"""recipes/imagenet.toml on an ImageNet-style JPEG tree, streamed (small backbone and size
set from the command line): it trains, two processes read disjoint shares, a killed run
resumes bit-exact, and a bad file is skipped or named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.crash_points import final, same, train
from pipelines.datasets.testing import write_imagenet_style, write_unreadable

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "imagenet.toml"
SMALL = {"model.backbone": "resnet8_cifar", "model.channels_last": "false", "data.image_size": "32",
         "train.mixed_precision": "no", "train.global_batch_size": "16", "train.eval_batch_size": "16",
         "train.epochs": "2", "train.num_threads": "1", "data.workers": "1", "optim.warmup_epochs": "0"}
LOADERS = ["torch", "dali"]


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return write_imagenet_style(tmp_path_factory.mktemp("imagenet"), (12, 4), classes=4)


def args(root: Path, loader: str, **more: str) -> list[str]:
    settings = {**SMALL, "data.root": str(root), "train.loader": loader, **more}
    return [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loader", LOADERS)
def test_the_imagenet_recipe_trains_streamed(tmp_path, imagenet, loader):
    done = train(RECIPE, tmp_path / "run", *args(imagenet, loader))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = rows(tmp_path / "run")
    assert [r["epoch"] for r in log] == [0, 1]
    assert log[0]["train_images"] == 48 and len(log[0]["val_per_class"]) == 4
    assert "val_acc1" in log[-1] and "gate" in json.dumps(log[-1])


@pytest.mark.slow
@pytest.mark.parametrize("loader", LOADERS)
def test_a_killed_stream_run_resumes_bit_exact(tmp_path, imagenet, loader):
    straight = train(RECIPE, tmp_path / "straight", *args(imagenet, loader))
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = train(RECIPE, tmp_path / "run", *args(imagenet, loader), crash="step:4")  # in the second epoch
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = train(RECIPE, tmp_path / "run", *args(imagenet, loader), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert same(final(tmp_path / "run"), final(tmp_path / "straight"))


@pytest.mark.slow
@pytest.mark.parametrize("loader", LOADERS)
def test_two_processes_stream_disjoint_shares(tmp_path, imagenet, loader):
    done = train(RECIPE, tmp_path / "run", *args(imagenet, loader, **{"train.epochs": "1"}), processes=2,
                 port=29571 + LOADERS.index(loader))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (row,) = rows(tmp_path / "run")
    assert row["world_size"] == 2 and row["replicas_in_sync"]
    assert row["train_images"] == 48  # 3 steps of 8 images on each of the two processes


@pytest.mark.parametrize("loader", LOADERS)
def test_a_bad_file_is_skipped_or_named(tmp_path, imagenet, loader):
    import shutil

    root = tmp_path / "imagenet"
    shutil.copytree(imagenet, root)
    bad = write_unreadable(root / "train" / "n00000001" / "zz_broken.JPEG", "truncated")
    skipped = train(RECIPE, tmp_path / "skip", *args(root, loader, **{"train.epochs": "1"}))
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "zz_broken.JPEG" in skipped.stderr + skipped.stdout
    named = train(RECIPE, tmp_path / "error", *args(root, loader, **{"train.epochs": "1", "data.on_corrupt": "error"}))
    assert named.returncode == 2
    assert f"cannot read image {bad}" in named.stderr and "Traceback" not in named.stderr
