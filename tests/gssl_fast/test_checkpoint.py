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
