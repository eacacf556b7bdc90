"""recipes/imagenet.toml on an ImageNet-style JPEG tree, streamed (small backbone and size
set from the command line): it trains, two processes read disjoint shares, a killed run
resumes bit-exact, and a bad file is skipped or named; and the same for the tree written
as WebDataset shards, read by the torch and the DALI loader."""

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
LOADERS = ["torch", "dali", "ffcv"]
# The fast loop trains on the torch stream; DALI's and FFCV's whole runs are in make test-all.
FAST_FIRST = [LOADERS[0], *(pytest.param(x, marks=pytest.mark.slow) for x in LOADERS[1:])]
SHARD_LOADERS = ["torch", "dali"]  # pipelines.datasets.shards.READERS


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return write_imagenet_style(tmp_path_factory.mktemp("imagenet"), (12, 4), classes=4)


def args(root: Path, loader: str, **more: str) -> list[str]:
    settings = {**SMALL, "data.root": str(root), "train.loader": loader, **more}
    return [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]


def with_a_broken_file(imagenet: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tree with a truncated JPEG among the training images: (root, the file)."""
    import shutil

    root = tmp_path / "imagenet"
    shutil.copytree(imagenet, root)
    return root, write_unreadable(root / "train" / "n00000001" / "zz_broken.JPEG", "truncated")


def listed(run: Path) -> list[list[str]]:
    """The (split, file) of each image the run's skipped_images.txt lists."""
    return [line.split("\t")[:2] for line in (run / "skipped_images.txt").read_text().splitlines()]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loader", FAST_FIRST)
def test_the_imagenet_recipe_trains_streamed(tmp_path, imagenet, loader):
    done = train(RECIPE, tmp_path / "run", *args(imagenet, loader))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = rows(tmp_path / "run")
    assert [r["epoch"] for r in log] == [0, 1]
    assert log[0]["train_images"] == 48 and len(log[0]["val_per_class"]) == 4
    assert "val_acc1" in log[-1] and "gate" in json.dumps(log[-1])
    evaluated_as_trained(tmp_path / "run")


def evaluated_as_trained(run: Path) -> None:
    """gssl_fast.evaluate reads the validation images as the run's loader did (streamed,
    centre-cropped): the same accuracy as the run's last epoch logged."""
    from gssl_fast.evaluate import evaluate_run

    got, last = evaluate_run(run), rows(run)[-1]
    assert (got["acc1"], got["acc5"]) == pytest.approx((last["val_acc1"], last["val_acc5"]))


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


@pytest.mark.slow
@pytest.mark.parametrize("loader", LOADERS)
def test_a_bad_file_is_skipped_or_named(tmp_path, imagenet, loader):
    root, bad = with_a_broken_file(imagenet, tmp_path)
    skipped = train(RECIPE, tmp_path / "skip", *args(root, loader, **{"train.epochs": "1"}))
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "zz_broken.JPEG" in skipped.stderr + skipped.stdout
    # Found as the stream reads it (or, for FFCV, as its .beton is written): listed all the same.
    assert listed(tmp_path / "skip") == [["train", str(bad)]]
    named = train(RECIPE, tmp_path / "error", *args(root, loader, **{"train.epochs": "1", "data.on_corrupt": "error"}))
    assert named.returncode == 2
    assert f"cannot read image {bad}" in named.stderr and "Traceback" not in named.stderr


# ---- the same data as WebDataset shards (python -m gssl_fast.convert --format webdataset)


def convert_to_shards(tree: Path, out: Path) -> dict[str, str]:
    """``tree`` written as shards of 6 samples into ``out``; the --set keys that read them."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "gssl_fast.convert", str(RECIPE), "--format", "webdataset",
                           "--out", str(out), "--shard-size", "6", "--set", f"data.root={tree}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    train_shards, val_shards = done.stdout.split()
    return {"data.name": "webdataset", "data.root": train_shards, "data.val_root": val_shards}


@pytest.fixture(scope="module")
def shards(imagenet, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("shards")
    keys = convert_to_shards(imagenet, out)
    assert keys["data.root"] == f"{out}/train-{{000000..000007}}.tar"  # 48 images
    assert keys["data.val_root"] == f"{out}/val-{{000000..000002}}.tar"  # 16 images
    return keys


@pytest.mark.parametrize("loader", SHARD_LOADERS)
def test_the_imagenet_recipe_trains_from_shards(tmp_path, shards, loader):
    done = train(RECIPE, tmp_path / "run", *args(shards["data.root"], loader, **shards))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = rows(tmp_path / "run")
    assert [r["epoch"] for r in log] == [0, 1]
    assert log[0]["train_images"] == 48 and len(log[0]["val_per_class"]) == 4
    assert "val_acc1" in log[-1] and "gate" in json.dumps(log[-1])
    evaluated_as_trained(tmp_path / "run")


def test_shard_keys_are_checked_with_the_recipe(shards):
    from gssl_fast.config import load_recipe
    from pipelines.errors import UserError

    def load(**more: str):
        return load_recipe(RECIPE, [f"{k}={v}" for k, v in {**shards, **more}.items()])

    assert load().data.val_root == shards["data.val_root"]
    for more, message in (({"train.loader": "ffcv"}, "train.loader must be one of 'torch', 'dali' for data.name"),
                          ({"data.root": ""}, "data.root must name the shards"),
                          ({"data.longtail": "exp"}, "data.longtail must be \"none\" for shards"),
                          ({"data.val_fraction": "0.1"}, "data.val_fraction must be 0 for shards"),
                          ({"data.shuffle_buffer": "-1"}, "data.shuffle_buffer must be >= 0")):
        with pytest.raises(UserError, match=message):
            load(**more)
    assert load(**{"data.stream": "false"}).data.crop == "random_resized"  # shards are always streamed


@pytest.mark.slow
@pytest.mark.parametrize("loader", SHARD_LOADERS)
def test_a_killed_shard_run_resumes_bit_exact(tmp_path, shards, loader):
    settings = args(shards["data.root"], loader, **shards)
    straight = train(RECIPE, tmp_path / "straight", *settings)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = train(RECIPE, tmp_path / "run", *settings, crash="step:4")  # in the second epoch
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = train(RECIPE, tmp_path / "run", *settings, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert same(final(tmp_path / "run"), final(tmp_path / "straight"))


@pytest.mark.slow
@pytest.mark.parametrize("loader", SHARD_LOADERS)
def test_two_processes_read_disjoint_shards(tmp_path, shards, loader):
    done = train(RECIPE, tmp_path / "run", *args(shards["data.root"], loader, **shards, **{"train.epochs": "1"}),
                 processes=2, port=29591 + SHARD_LOADERS.index(loader))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (row,) = rows(tmp_path / "run")
    assert row["world_size"] == 2 and row["replicas_in_sync"]
    assert row["train_images"] == 48  # 4 shards of 6 on each process: 3 steps of 8 images on each


@pytest.mark.slow
@pytest.mark.parametrize("loader", SHARD_LOADERS)
def test_a_bad_file_in_shards_is_skipped_or_named(tmp_path, imagenet, loader):
    from pipelines.datasets import list_folder

    root, bad = with_a_broken_file(imagenet, tmp_path)
    member = f"{list_folder(root, 'train').paths.index(str(bad)):09d}.jpg of shard"
    keys = {**convert_to_shards(root, tmp_path / "shards"), "train.epochs": "1"}
    skipped = train(RECIPE, tmp_path / "skip", *args(keys["data.root"], loader, **keys))
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert member in skipped.stderr + skipped.stdout
    assert [row[0] for row in listed(tmp_path / "skip")] == ["train"]
    assert member in listed(tmp_path / "skip")[0][1]
    named = train(RECIPE, tmp_path / "error", *args(keys["data.root"], loader, **keys, **{"data.on_corrupt": "error"}))
    assert named.returncode == 2
    assert f"cannot read image {member}" in named.stderr and "Traceback" not in named.stderr
