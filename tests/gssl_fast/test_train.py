"""The trainer end to end on tiny runs of the built-in dataset: files it writes, user
errors, preemption, and data-parallel CPU processes (kill -9 and resume: test_crashes.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gssl_fast.train import main

ROOT = Path(__file__).resolve().parents[2]
TINY = """
[data]
name = "shapes"
image_size = 16
train_size = 256
val_size = 64

[model]
backbone = "resnet8_cifar"

[optim]
lr = 0.05
warmup_epochs = 1

[train]
epochs = 2
batch_size = 32
eval_batch_size = 64
num_threads = 1
"""


def write_recipe(tmp_path: Path, text: str = TINY, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def run_cli(*args, env_extra=None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "gssl_fast.train", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, **kw)


def test_training_writes_config_metrics_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    assert main([str(write_recipe(tmp_path)), "--out", str(out), "--set", "train.steps_per_epoch=3"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    need = {"epoch", "lr", "train_loss", "loss_cls", "loss_ssl", "val_acc1", "val_acc5", "gate", "pretext_acc",
            "images_per_s", "seconds", "world_size", "val_per_class"}
    assert need <= set(rows[0])
    assert set(rows[0]["gate"]) == set(rows[0]["pretext_acc"]) == {"rotation", "flip", "perm"}
    assert abs(sum(rows[0]["gate"].values()) - 1.0) < 1e-4
    assert rows[0]["train_images"] == 3 * 32 and rows[0]["world_size"] == 1
    assert (out / "config.toml").read_text().count("[pretext]") == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]
    state = torch.load(out / "checkpoints" / "epoch_0002.pt", weights_only=True)
    assert state["epoch"] == 2 and {"model", "optimizer", "scheduler", "rng"} <= set(state)


def test_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    recipe, out = write_recipe(tmp_path), tmp_path / "run"
    args = [str(recipe), "--out", str(out), "--set", "train.steps_per_epoch=1", "--set", "train.epochs=1"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume auto" in capsys.readouterr().err
    capsys.readouterr()
    assert main(args + ["--resume", "auto"]) == 0  # already finished: nothing left to do
    assert "already finished" in capsys.readouterr().out
    assert main(args + ["--overwrite"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


ERRORS = {
    "missing data root": ('[data]\nname = "cifar10"\nroot = "{tmp}/nowhere"\n', ["nowhere", "cifar"]),
    "malformed toml": ('[data\nname = "shapes"\n', ["bad.toml", "line 1"]),
    "unknown key": ('[data]\nnmae = "shapes"\n', ["data.nmae", "image_size"]),
    "odd image size": ('[data]\nimage_size = 33\n', ["data.image_size", "even"]),
    "negative lambda": ('[pretext]\nlambda = -0.1\n', ["pretext.lambda", ">= 0"]),
    "unknown backbone": ('[model]\nbackbone = "resnet32_cifr"\n', ["model.backbone", "resnet32_cifar"]),
}


@pytest.mark.parametrize("case", ERRORS)
def test_user_errors_exit_2_with_one_clear_line(tmp_path, capsys, case):
    text, needles = ERRORS[case]
    recipe = write_recipe(tmp_path, text.format(tmp=tmp_path), name="bad")
    assert main([str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def test_unsafe_cifar_pickle_is_refused_without_running(tmp_path, capsys):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2))
    recipe = write_recipe(tmp_path, f'[data]\nname = "cifar10"\nroot = "{root}"\n', name="evil")
    assert main([str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "data_batch_1" in err and not marker.exists()


def test_cli_exit_status_and_no_traceback(tmp_path):
    recipe = write_recipe(tmp_path, '[train]\nloader = "tf.data"\n', name="bad")
    proc = run_cli(recipe, "--out", tmp_path / "run")
    assert proc.returncode == 2
    assert "train.loader" in proc.stderr and "Traceback" not in proc.stderr


def final_state(run: Path, epoch: int) -> dict:
    return torch.load(run / "checkpoints" / f"epoch_{epoch:04d}.pt", weights_only=True)["model"]


def two_process_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("launcher, loader, port", [
    # torchrun with the torch loader: tests/gssl_fast/run/test_peers.py's unbroken run.
    ("accelerate", "torch", 29533), ("torchrun", "dali", 29535), ("torchrun", "ffcv", 29536),
])
def test_two_cpu_processes_stay_in_sync(tmp_path, launcher, loader, port):
    recipe = write_recipe(tmp_path)
    out = tmp_path / launcher
    bin_dir = Path(sys.executable).parent
    if launcher == "accelerate":
        cmd = [str(bin_dir / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
    else:
        cmd = [str(bin_dir / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port)]
    cmd += ["-m", "gssl_fast.train", str(recipe), "--out", str(out), "--set", "train.steps_per_epoch=3",
            "--set", f"train.loader={loader}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = two_process_metrics(out)
    assert [r["world_size"] for r in rows] == [2, 2]
    assert all(r["replicas_in_sync"] for r in rows)
    # Each process took 3 steps of 32 on its own share: 192 images an epoch in all.
    assert rows[0]["train_images"] == 2 * 3 * 32
    assert proc.stdout.count("epoch 2/2:") == 1, "only the main process prints"


@pytest.mark.parametrize("loader", ["torch", "dali", "ffcv"])
def test_tinyimagenet_files_train_with_each_loader(tmp_path, loader):
    import numpy as np

    from pipelines.datasets.testing import write_tinyimagenet

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(48) % 3
    root = write_tinyimagenet(tmp_path / "tiny", images[:36], labels[:36], images[36:], labels[36:])
    recipe = write_recipe(tmp_path, TINY.replace('name = "shapes"', f'name = "tinyimagenet"\nroot = "{root}"'))
    out = tmp_path / "run"
    assert main([str(recipe), "--out", str(out), "--set", f"train.loader={loader}", "--set", "train.epochs=1",
                 "--set", "train.batch_size=12"]) == 0
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["train_images"] == 36 and len(row["val_per_class"]) == 3


def test_long_tailed_ldam_drw_run_reports_shot_groups(tmp_path):
    text = TINY.replace("train_size = 256", "train_size = 600\nlongtail = \"exp\"\nimbalance_ratio = 0.1") + """
[loss]
name = "ldam"
drw = true
drw_start_epoch = 1
"""
    out = tmp_path / "run"
    assert main([str(write_recipe(tmp_path, text)), "--out", str(out), "--set", "train.steps_per_epoch=2"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"val_many_shot", "val_medium_shot", "val_few_shot"} <= set(rows[0])
    state = torch.load(out / "checkpoints" / "epoch_0002.pt", weights_only=True)["model"]
    weight = state["class_loss.weight"]
    # Re-weighting is on from epoch 1: the rarest class (the last) weighs the most.
    assert not torch.allclose(weight, torch.ones_like(weight)) and weight.argmax() == len(weight) - 1
    first = torch.load(out / "checkpoints" / "epoch_0001.pt", weights_only=True)["model"]["class_loss.weight"]
    assert torch.equal(first, torch.ones_like(first))


@pytest.mark.slow
def test_compiled_model_trains_and_checkpoints_plain_weights(tmp_path):
    """train.compile = true: torch.compile of the model (inductor, here on the CPU); the
    checkpoint holds the module's own weights, which load_model reads back."""
    import gssl_fast

    out = tmp_path / "run"
    assert main([str(write_recipe(tmp_path)), "--out", str(out), "--set", "train.compile=true",
                 "--set", "train.steps_per_epoch=2", "--set", "train.epochs=1"]) == 0
    state = torch.load(out / "checkpoints" / "epoch_0001.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in state["model"])
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["train_images"] == 64 and row["train_loss"] == row["train_loss"]  # finite, logged
    assert gssl_fast.load_model(out)(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_global_batch_is_split_over_the_processes():
    from gssl_fast.config import TrainConfig
    from pipelines.errors import UserError
    from gssl_fast.train import per_process

    assert per_process(TrainConfig(batch_size=100), 4).batch_size == 100  # per process as written
    assert per_process(TrainConfig(global_batch_size=100), 4).batch_size == 25
    assert per_process(TrainConfig(global_batch_size=100), 1).batch_size == 100
    with pytest.raises(UserError, match="train.global_batch_size = 100 is not a multiple of the 3 processes"):
        per_process(TrainConfig(global_batch_size=100), 3)


def test_tensorboard_gets_every_logged_scalar(tmp_path):
    """train.log_with = "tensorboard": Accelerate's tracker writes under the run folder
    every number of metrics.jsonl, gate values and pretext accuracies included."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main([str(write_recipe(tmp_path)), "--out", str(out), "--set", "train.steps_per_epoch=2",
                 "--set", "train.log_with=tensorboard"]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "val_acc1", "best_val_acc1", "gate/rotation", "gate/flip", "pretext_acc/perm", "lr"} <= tags
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [e.value for e in events.Scalars("gate/rotation")]
    assert [e.step for e in events.Scalars("val_acc1")] == [0, 1]
    assert logged == pytest.approx([r["gate"]["rotation"] for r in rows])


def test_precision_that_would_not_run_is_refused_or_named(tmp_path, capsys, monkeypatch):
    from gssl_fast.train import check_precision

    recipe = write_recipe(tmp_path)
    assert main([str(recipe), "--out", str(tmp_path / "run"), "--set", "train.mixed_precision=fp16",
                 "--set", "train.cpu=true"]) == 2
    assert "changes nothing on the CPU" in capsys.readouterr().err
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    check_precision("no", cpu=True)
    assert "replaces accelerate launch's --mixed_precision bf16" in capsys.readouterr().err


@pytest.mark.slow
def test_a_beton_of_other_data_is_refused(tmp_path, capsys):
    """The issue's case: a .beton written from one recipe's data, trained with another."""
    from gssl_fast.convert import main as convert_main

    recipe = write_recipe(tmp_path)
    beton = tmp_path / "shapes.beton"
    assert convert_main([str(recipe), "--out", str(beton)]) == 0
    base = [str(recipe), "--set", "train.loader=ffcv", "--set", f"data.beton={beton}", "--set", "train.epochs=1",
            "--set", "train.steps_per_epoch=1"]
    assert main([*base, "--out", str(tmp_path / "same")]) == 0
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "other"), "--set", "data.seed=1"]) == 2
    err = capsys.readouterr().err
    assert "was not written from the recipe's train split" in err and str(beton) in err


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_a_single_imagefolder_tree_trains_with_a_held_out_val_split(tmp_path, loader):
    import numpy as np

    from pipelines.datasets.testing import write_image_folder

    rng = np.random.default_rng(0)
    root = write_image_folder(tmp_path / "tree", rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8),
                              np.arange(40) % 4)
    recipe = write_recipe(tmp_path, TINY.replace('name = "shapes"', f'name = "imagefolder"\nroot = "{root}"'))
    out = tmp_path / "run"
    assert main([str(recipe), "--out", str(out), "--set", f"train.loader={loader}", "--set", "data.val_fraction=0.25",
                 "--set", "train.epochs=1", "--set", "train.batch_size=10"]) == 0
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["train_images"] == 30 and len(row["val_per_class"]) == 4


def test_a_resume_names_changed_settings_and_a_refused_one_leaves_the_recipe(tmp_path, capsys):
    recipe, out = write_recipe(tmp_path), tmp_path / "run"
    base = [str(recipe), "--out", str(out), "--set", "train.steps_per_epoch=1"]
    assert main([*base, "--set", "train.epochs=1"]) == 0
    written = (out / "config.toml").read_text()
    capsys.readouterr()
    assert main([*base, "--resume", "auto", "--set", "train.epochs=2", "--set", "model.backbone=resnet20_cifar"]) == 2
    err = capsys.readouterr().err
    assert "does not fit this recipe's model" in err and ("size mismatch" in err or "Missing key" in err)
    assert (out / "config.toml").read_text() == written  # the refused resume changed nothing
    assert main([*base, "--resume", "auto", "--set", "train.epochs=4", "--set", "optim.lr=0.07"]) == 0
    said = capsys.readouterr().out
    assert "resuming with changed settings: optim.lr 0.05 -> 0.07; train.epochs 1 -> 4" in said
    assert (out / "config_history" / "config-001.toml").read_text() == written
    assert "lr = 0.07" in (out / "config.toml").read_text()
    second = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
    from gssl_fast.config import load_recipe as load
    from gssl_fast.model.optim import lr_factor

    cfg = load(out / "config.toml").optim
    # After 2 of 4 steps the next step's lr: the new peak lr on the new schedule.
    assert second["lr"] == pytest.approx(0.07 * lr_factor(cfg, 3.0, 4)) and second["lr"] > 0.01


def test_a_run_folder_is_never_replaced_by_surprise(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    base = [str(recipe), "--set", "train.steps_per_epoch=1", "--set", "train.epochs=1"]
    mine, other = tmp_path / "mine", tmp_path / "other"
    assert main([*base, "--out", str(mine)]) == 0 and main([*base, "--out", str(other)]) == 0
    capsys.readouterr()
    foreign = other / "checkpoints" / "epoch_0001.pt"
    assert main([*base, "--out", str(mine), "--resume", str(foreign), "--set", "train.epochs=2"]) == 2
    assert "holds a run of its own" in capsys.readouterr().err
    assert main([*base, "--out", str(mine), "--resume", "auto", "--overwrite"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "fresh"), "--resume", str(foreign), "--set", "train.epochs=2"]) == 0
    assert main([*base, "--out", str(mine), "--overwrite"]) == 0
    assert "--overwrite: removing the earlier run" in capsys.readouterr().out


def stop_with(signum: int, recipe: Path, out: Path, args: list, after_line: str) -> subprocess.CompletedProcess:
    """Runs the trainer, sends ``signum`` once ``after_line`` shows in its output."""
    proc = subprocess.Popen([sys.executable, "-m", "gssl_fast.train", str(recipe), "--out", str(out), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if after_line in line:
            proc.send_signal(signum)
            break
    rest, _ = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines) + rest, "")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_preempted_run_checkpoints_mid_epoch_and_resumes_bit_exact(tmp_path, signum):
    recipe = write_recipe(tmp_path, TINY.replace("epochs = 2", "epochs = 3"))
    args = ["--set", "train.steps_per_epoch=20", "--set", "train.num_threads=1"]
    straight = tmp_path / "straight"
    assert run_cli(recipe, "--out", straight, *args).returncode == 0
    stopped = tmp_path / "stopped"
    proc = stop_with(signum, recipe, stopped, args, "epoch 2/3 step 4/20")
    assert proc.returncode == 128 + signum, proc.stdout[-2000:]
    assert f"stopped by {signal.Signals(signum).name} at epoch 2, step" in proc.stdout
    mid = [p.name for p in (stopped / "checkpoints").iterdir() if "_step_" in p.name]
    assert len(mid) == 1 and mid[0].startswith("epoch_0001_step_"), mid
    resumed = run_cli(recipe, "--out", stopped, "--resume", "auto", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert ", step " in resumed.stdout
    a, b = final_state(straight, 3), final_state(stopped, 3)
    assert all(torch.equal(a[k], b[k]) for k in a), "the preempted run differs from the uninterrupted one"
    rows = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    straight_rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in straight_rows]


def launched(launcher: str, port: int) -> list[str]:
    """The command that starts ``python -m gssl_fast.train`` under ``launcher``, one process."""
    bin_dir = Path(sys.executable).parent
    return {"python": [sys.executable],
            "accelerate": [str(bin_dir / "accelerate"), "launch", "--num_processes", "1", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)],
            "torchrun": [str(bin_dir / "torchrun"), "--nproc_per_node", "1", "--master_port", str(port)]}[launcher]


@pytest.mark.slow
@pytest.mark.parametrize("launcher, port", [("python", 0), ("accelerate", 29541), ("torchrun", 29542)])
def test_one_ctrl_c_to_the_process_group_checkpoints_the_step_and_exits_130(tmp_path, launcher, port):
    """A terminal's Ctrl-C: SIGINT to the whole foreground process group (the launcher
    passes its own copy on too). The trainer stops at the next step, writes the step
    checkpoint and says so; the launcher ends with 128 + SIGINT."""
    recipe, out = write_recipe(tmp_path, TINY.replace("epochs = 2", "epochs = 3")), tmp_path / "run"
    cmd = [*launched(launcher, port), "-m", "gssl_fast.train", str(recipe), "--out", str(out),
           "--set", "train.steps_per_epoch=40"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "epoch 1/3 step 8/40" in line:
            os.killpg(proc.pid, signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=120)
    said = "".join(lines) + rest
    trainer = said.split("Traceback")[0] if launcher == "torchrun" else said
    assert "stopped by SIGINT at epoch 1, step" in trainer and "(exit status 130)" in trainer, said[-3000:]
    assert "Traceback" not in trainer and "KeyboardInterrupt" not in trainer, said[-3000:]
    # torchrun reports any worker stopped by a signal as its own failure (a SignalException
    # traceback, exit 1), whatever the worker did; the others pass the status on.
    assert proc.returncode == (1 if launcher == "torchrun" else 130), said[-3000:]
    assert [p.name for p in (out / "checkpoints").iterdir() if "_step_" in p.name], said[-3000:]


def test_the_readmes_accelerate_launch_says_a_recipe_error_in_one_line(tmp_path):
    """``accelerate launch --config_file launch/one_process.yaml -q``: the trainer's one
    line, no defaults warning, no launcher traceback (Accelerate's status for any failure is 1)."""
    recipe = write_recipe(tmp_path, '[data]\nnmae = "shapes"\n', name="bad")
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", "launch/one_process.yaml", "-q",
           "-m", "gssl_fast.train", str(recipe), "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    said = (proc.stdout + proc.stderr).strip()
    assert said.startswith("error: unknown key 'data.nmae'") and "\n" not in said, said
    assert proc.returncode == 1
