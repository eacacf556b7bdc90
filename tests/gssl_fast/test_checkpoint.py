import pytest
import torch

from gssl_fast import checkpoint
from pipelines.errors import UserError


def test_atomic_save_leaves_no_temp_files_and_resolves_newest(tmp_path):
    for e in (1, 2, 3):
        checkpoint.save_atomic({"epoch": e, "w": torch.ones(2) * e}, checkpoint.checkpoint_path(tmp_path, e))
    checkpoint.prune(tmp_path, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["epoch_0002.pt", "epoch_0003.pt"]
    newest = checkpoint.resolve_resume("auto", tmp_path)
    assert checkpoint.load(newest)["epoch"] == 3
    assert checkpoint.resolve_resume(None, tmp_path) is None
    assert checkpoint.resolve_resume("auto", tmp_path / "empty") is None


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = checkpoint.checkpoint_path(tmp_path, 1)
    checkpoint.save_atomic({"epoch": 1}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        checkpoint.save_atomic({"epoch": 2, "x": Unsaveable()}, path)
    assert checkpoint.load(path)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_bad_resume_path_and_unreadable_file(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint"):
        checkpoint.resolve_resume(str(tmp_path / "nope.pt"), tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="bad.pt"):
        checkpoint.load(bad)


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_says_so(tmp_path, capsys, monkeypatch):
    import errno

    from gssl_fast import checkpoint as ckpt
    from gssl_fast.train import main
    from tests.gssl_fast.tiny import write_tiny

    recipe, out = write_tiny(tmp_path, after="steps_per_epoch = 1"), tmp_path / "run"
    assert main([str(recipe), "--out", str(out)]) == 0
    first = ckpt.list_checkpoints(out)[-1]
    before = first.read_bytes()

    def full_disk(state, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    capsys.readouterr()
    assert main([str(recipe), "--out", str(out), "--resume", "auto", "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and f"{first}, is intact" in err
    assert ckpt.list_checkpoints(out) == [first] and first.read_bytes() == before
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp file left


class FakeAccelerator:
    is_main_process, scaler = True, None

    def wait_for_everyone(self):
        pass


def fake_training(classes=("a", "b", "c")):
    """The objects ``save_checkpoint`` and ``restore`` take, for a 3-class linear model."""
    from types import SimpleNamespace

    from gssl_fast.sections import DataConfig

    model = torch.nn.Linear(2, len(classes))
    ctx = SimpleNamespace(class_counts=(5,) * len(classes), mean=(0.5,) * 3, std=(0.25,) * 3, classes=classes,
                          data=DataConfig(name="imagefolder", root="/data/tree"))
    method = SimpleNamespace(model=model, ctx=ctx, state_dict=dict, load_state_dict=lambda state: None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return method, optimizer, scheduler, FakeAccelerator()


def save(run_dir, epochs_done, keep, step=0, training=None):
    method, optimizer, scheduler, accelerator = training or fake_training()
    recipe = '[data]\nname = "imagefolder"\nroot = "/data/tree"\n'
    return checkpoint.save_checkpoint(run_dir, epochs_done, recipe, method, optimizer, scheduler, accelerator, keep,
                                      partial={"step": step} if step else None)


def names(run_dir):
    return [p.name for p in checkpoint.list_checkpoints(run_dir)]


def test_a_step_checkpoint_is_removed_once_a_newer_checkpoint_supersedes_it(tmp_path):
    keep = 2
    save(tmp_path, 1, keep)
    save(tmp_path, 2, keep)
    # Preempted in the third epoch, twice: train.py keeps one more, so that the step
    # checkpoint never pushes out an epoch checkpoint; the later step supersedes the earlier.
    save(tmp_path, 2, keep + 1, step=4)
    save(tmp_path, 2, keep + 1, step=8)
    assert names(tmp_path) == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0002_step_000008.pt"]
    save(tmp_path, 3, keep)  # the resumed run completes the epoch
    assert names(tmp_path) == ["epoch_0002.pt", "epoch_0003.pt"]


def test_a_resume_onto_other_classes_names_both_and_gives_advice_that_runs(tmp_path):
    path = save(tmp_path, 1, keep=2)
    method, optimizer, scheduler, accelerator = fake_training(classes=("cat", "dog", "eel", "fox", "gnu"))
    with pytest.raises(UserError) as err:
        checkpoint.restore(path, method, optimizer, scheduler, accelerator)
    message = str(err.value)
    assert f"checkpoint {path} was trained on 3 classes ('a', 'b', 'c') of data.name = 'imagefolder'" in message
    assert "this recipe's data has 5 classes ('cat', 'dog', 'eel', ...)" in message
    assert message.endswith("or start over in this one with --overwrite (without --resume)")
    assert "--out" in message and "\n" not in message


def test_a_resume_onto_as_many_classes_of_other_names_is_refused(tmp_path):
    path = save(tmp_path, 1, keep=2)
    method, optimizer, scheduler, accelerator = fake_training(classes=("x", "y", "z"))
    with pytest.raises(UserError, match=r"3 classes \('a', 'b', 'c'\).*3 classes \('x', 'y', 'z'\)"):
        checkpoint.restore(path, method, optimizer, scheduler, accelerator)
    same = fake_training()
    assert checkpoint.restore(path, *same)[0] == 1


def test_a_resume_onto_a_dataset_with_other_classes_says_so_in_full(tmp_path, capsys):
    """The issue's case, end to end: 10 shapes classes, then a 4-class ImageFolder tree."""
    import numpy as np

    from gssl_fast.train import main
    from pipelines.datasets.testing import write_image_folder
    from tests.gssl_fast.tiny import write_tiny

    shapes, out = write_tiny(tmp_path, after="steps_per_epoch = 1"), tmp_path / "run"
    assert main([str(shapes), "--out", str(out)]) == 0
    tree = write_image_folder(tmp_path / "tree", np.zeros((16, 16, 16, 3), np.uint8), np.arange(16) % 4)
    capsys.readouterr()
    assert main([str(shapes), "--out", str(out), "--resume", "auto", "--set", "train.epochs=2",
                 "--set", "data.name=imagefolder", "--set", f"data.root={tree}", "--set", "data.val_fraction=0.5",
                 "--set", "train.batch_size=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "was trained on 10 classes" in err and "data.name = 'shapes'" in err and "has 4 classes" in err
    assert err.endswith("(without --resume)") and err.count("\n") == 0


@pytest.mark.slow
def test_a_preempted_run_keeps_no_more_than_keep_checkpoints_once_resumed(tmp_path):
    from tests.gssl_fast.test_train import run_cli
    from tests.gssl_fast.tiny import write_tiny

    recipe, out = write_tiny(tmp_path, after="epochs = 3\nsteps_per_epoch = 3\nkeep_checkpoints = 2"), tmp_path / "run"
    recipe.write_text(recipe.read_text().replace("epochs = 1\n", ""))
    # SIGTERM after the 8th optimizer step: the second step of the third epoch.
    stopped = run_cli(recipe, "--out", out, env_extra={"GSSL_FAST_CRASH_AT": "step:8", "GSSL_FAST_CRASH_SIGNAL": "TERM"})
    assert stopped.returncode == 128 + 15, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    assert names(out) == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0002_step_000002.pt"]
    resumed = run_cli(recipe, "--out", out, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert names(out) == ["epoch_0002.pt", "epoch_0003.pt"]
