"""The run folder: a run that fails to start leaves it exactly as it was (and creates
none), --overwrite removes the earlier run only once everything checked, and what a
rerun with --stage records."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gssl_fast.train import main
from tests.gssl_fast.tiny import write_tiny

ROOT = Path(__file__).resolve().parents[3]
QUICK = ["--set", "train.steps_per_epoch=1"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path -> hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished(tmp_path):
    """A finished tiny run in ``tmp_path / "run"``: ``(recipe, run folder)``."""
    recipe, run = write_tiny(tmp_path), tmp_path / "run"
    assert main([str(recipe), "--out", str(run), *QUICK]) == 0
    return recipe, run


BAD_STARTS = {
    "missing data folder": ["--set", "data.name=imagefolder", "--set", "data.root=/no/such/dir"],
    "odd batch for MixUp": ["--set", "method.mixup_alpha=0.8", "--set", "pretext.tasks=[]",
                            "--set", "train.global_batch_size=33"],
    "unknown backbone": ["--set", "model.backbone=resnet9000"],
    "no full step": ["--set", "train.batch_size=4096"],
    "stage of a method without stages": ["--stage", "linear"],
}


@pytest.mark.parametrize("case", BAD_STARTS)
def test_overwrite_that_fails_to_start_leaves_the_earlier_run_as_it_was(finished, capsys, case):
    recipe, run = finished
    before = snapshot(run)
    capsys.readouterr()
    assert main([str(recipe), "--out", str(run), "--overwrite", *QUICK, *BAD_STARTS[case]]) == 2
    captured = capsys.readouterr()
    assert "removing" not in captured.out and captured.err.startswith("error: ")
    assert snapshot(run) == before


HOLD = """import sys, time
from types import SimpleNamespace
from gssl_fast.run.folder import FolderLock
lock = FolderLock(sys.argv[1], SimpleNamespace(is_main_process=True, num_processes=1))
lock.take()
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_trainer_on_a_folder_is_refused_until_the_first_is_gone(finished, capsys):
    import signal
    import subprocess
    import sys

    recipe, run = finished
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run)
        capsys.readouterr()
        for how in (["--resume", "auto"], ["--overwrite"]):
            assert main([str(recipe), "--out", str(run), *QUICK, *how]) == 2
            err = capsys.readouterr().err
            assert f"is being trained by another trainer (pid {holder.pid} on " in err, err
            assert snapshot(run) == before, "nothing in the folder changed"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the dead holder's lock: the folder is free at once.
    assert main([str(recipe), "--out", str(run), *QUICK, "--overwrite"]) == 0
    assert (run / ".trainer.lock").read_text().startswith("pid ")


def test_a_file_system_without_locks_trains_unguarded_and_says_so_once(tmp_path, capsys, monkeypatch):
    import errno
    import fcntl

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    assert main([str(write_tiny(tmp_path)), "--out", str(tmp_path / "run"), *QUICK]) == 0
    assert capsys.readouterr().err.count("the file system does not lock files (No locks available)") == 1


@pytest.mark.parametrize("case", BAD_STARTS)
def test_a_run_that_fails_to_start_leaves_no_folder(tmp_path, case):
    out = tmp_path / "fresh"
    assert main([str(write_tiny(tmp_path)), "--out", str(out), *QUICK, *BAD_STARTS[case]]) == 2
    assert not out.exists()


def test_overwrite_starts_a_new_history(finished, capsys):
    recipe, run = finished
    (run / "report").mkdir()
    (run / "report" / "index.html").write_text("the old run's report")
    capsys.readouterr()
    assert main([str(recipe), "--out", str(run), "--overwrite", *QUICK, "--set", "optim.lr=0.02"]) == 0
    out = capsys.readouterr().out
    assert "--overwrite: removing the earlier run" in out and "resuming" not in out
    assert not (run / "config_history").exists() and not (run / "report").exists()
    assert "lr = 0.02" in (run / "config.toml").read_text()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
