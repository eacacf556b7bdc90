"""The ladder: every table's rows load, the dry run lists Table 1, and two rows run for
one epoch on CIFAR-format files written here, into table.md / table.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from gssl_fast.config import load_recipe
from gssl_fast.ladder import load_table, main, recipe_path
from pipelines.datasets.testing import write_cifar10

TABLES = Path(__file__).resolve().parents[2] / "recipes" / "tables"


@pytest.mark.parametrize("path", sorted(TABLES.glob("*.toml")), ids=lambda p: p.stem)
def test_every_row_of_every_table_is_a_valid_recipe(path):
    table = load_table(path)
    for row in table.rows:
        assert len(row.paper) == len(table.metrics)
        if not row.cited:
            load_recipe(recipe_path(table, row), row.set)


def test_dry_run_lists_the_30_rows_of_table1_with_the_papers_numbers(capsys):
    assert main([str(TABLES / "table1.toml"), "--dry-run", "--out", "somewhere"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    runnable = [line for line in lines if "gssl_fast.train" in line]
    assert len(runnable) == 30 and len(lines) == 42  # plus SPP and SLA-SD, cited at each ratio
    first = runnable[0].split()
    assert first[:4] == ["c10-rho0.01-ldam-drw", "paper", "best_val_acc1", "77.03"]
    assert "--set data.imbalance_ratio=0.01" in runnable[0] and "somewhere/c10-rho0.01-ldam-drw" in runnable[0]
    assert any(line.startswith("c100-rho0.05-gssl-all  paper best_val_acc1 54.75") for line in runnable)
    assert any(line.startswith("c10-rho0.01-spp") and "cited" in line for line in lines)


def test_unknown_row_is_a_one_line_error(capsys):
    assert main([str(TABLES / "table1.toml"), "--rows", "c10-nope", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "c10-nope" in err and "c10-rho0.01-lorot-e" in err


@pytest.mark.slow
def test_two_rows_run_and_fill_the_table(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 100)  # 100 per class: rho 0.01 keeps one image of the rarest
    images = rng.integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8)
    root = write_cifar10(tmp_path / "cifar", images, labels, val_images=images[:200], val_labels=labels[:200])
    rows = ["c10-rho0.01-ldam-drw", "c10-rho0.01-lorot-e"]
    sets = [f"data.root={root}", "model.backbone=resnet8_cifar", "train.epochs=1", "train.steps_per_epoch=2",
            "train.batch_size=32", "train.num_threads=1", "loss.drw_start_epoch=0"]
    args = [str(TABLES / "table1.toml"), "--rows", *rows, "--out", str(tmp_path / "t1")]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    table = (tmp_path / "t1" / "table.md").read_text()
    with open(tmp_path / "t1" / "table.csv") as f:
        csv_rows = {r[0]: r for r in csv.reader(f)}
    for name, paper in zip(rows, ("77.03", "81.82")):
        assert name in table and (tmp_path / "t1" / name / "finished").exists()
        assert csv_rows[name][1] == paper and float(csv_rows[name][2]) >= 0  # paper, best
        assert float(csv_rows[name][4]) == pytest.approx(float(csv_rows[name][2]) - float(paper), abs=0.011)
    assert csv_rows["c10-rho0.01-spp (cited)"][2] == ""  # cited: no run
    capsys.readouterr()
    assert main(args) == 0  # finished rows are skipped
    assert capsys.readouterr().out.count("finished, skipped") == 2
    # A row with checkpoints but no "finished" mark (killed) continues where it stopped.
    (tmp_path / "t1" / rows[0] / "finished").unlink()
    assert main([*args, "--dry-run"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(rows[0]))
    assert line.endswith("--resume auto")


TWO_ROWS = ["--rows", "c10-rho0.01-ldam-drw", "c10-rho0.01-lorot-e"]


@pytest.mark.parametrize("bad", ["train.epoch=3", "train.epochs=-3"], ids=["unknown key", "invalid value"])
def test_a_recipe_error_in_every_row_is_said_once_and_nothing_runs(tmp_path, capsys, bad):
    # The rows' own overrides differ (their message names them), the error is the same.
    assert main([str(TABLES / "table1.toml"), *TWO_ROWS, "--out", str(tmp_path / "t"), "--set", bad]) == 2
    out, err = capsys.readouterr()
    assert err.count("error: ") == 1 and err.startswith("error: every row") and bad.split("=")[0] in err
    assert "rerun" not in err and "gssl_fast.train" not in out  # nothing ran: there is nothing to continue
    assert not (tmp_path / "t" / "c10-rho0.01-ldam-drw").exists()


def test_rows_with_different_recipe_errors_are_each_named_and_nothing_runs(tmp_path, capsys):
    table = tmp_path / "t.toml"
    table.write_text('[[rows]]\nname = "a"\nrecipe = "demo"\nset = ["train.epochs=0"]\npaper = 1.0\n'
                     '[[rows]]\nname = "b"\nrecipe = "demo"\nset = ["data.name=nope"]\npaper = 2.0\n'
                     '[[rows]]\nname = "c"\nrecipe = "demo"\npaper = 3.0\n')
    assert main([str(table), "--out", str(tmp_path / "t"), "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert "error: a: train.epochs" in err and "error: b: data.name" in err and "rerun" not in err
    assert "gssl_fast.train" not in out


@pytest.mark.slow
def test_a_data_error_in_every_row_is_said_once_without_the_rerun_hint(tmp_path, capsys):
    args = [str(TABLES / "table1.toml"), *TWO_ROWS, "--out", str(tmp_path / "t"), "--set", "data.root=/nowhere/c10"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "rerun" not in err
    summary = [line for line in err.splitlines() if line.startswith("error: every row")]
    assert len(summary) == 1 and "/nowhere/c10" in summary[0]


@pytest.mark.slow
def test_the_table_lists_each_rows_overrides_and_is_titled_after_the_data_it_ran_on(tmp_path):
    sets = ["data.name=shapes", "data.image_size=16", "data.train_size=1000", "data.val_size=64",
            "model.backbone=resnet8_cifar", "train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=32",
            "train.num_threads=1", "loss.drw_start_epoch=0"]
    args = [str(TABLES / "table1.toml"), "--rows", "c10-rho0.01-lorot-e", "--out", str(tmp_path / "t1")]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    md = (tmp_path / "t1" / "table.md").read_text()
    title = md.splitlines()[0]
    assert title.startswith("# ") and "shapes" in title and "CIFAR" not in title
    row = next(line for line in md.splitlines() if line.startswith("| c10-rho0.01-lorot-e "))
    for item in ("data.imbalance_ratio=0.01", 'pretext.tasks=["rotation"]', *sets):
        assert item in row, item
    ldam = next(line for line in md.splitlines() if line.startswith("| c10-rho0.01-ldam-drw "))
    assert "data.name=shapes" not in ldam  # not run: no overrides it ran with
    with open(tmp_path / "t1" / "table.csv") as f:
        header, *rows = list(csv.reader(f))
    assert header[-1] == "overrides" and header[1] == "best_val_acc1 paper"


# Rows side by side (--parallel, --slurm): a two-row table over the tiny recipe.

def _two_row_table(folder: Path) -> Path:
    from tests.gssl_fast.tiny import write_tiny

    write_tiny(folder)
    table = folder / "two.toml"
    table.write_text('title = "two rows"\n[[rows]]\nname = "a"\nrecipe = "tiny.toml"\npaper = 10.0\n'
                     '[[rows]]\nname = "b"\nrecipe = "tiny.toml"\nset = ["train.seed=1"]\npaper = 20.0\n')
    return table


def _sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _complete(out: Path, rows=("a", "b")) -> dict:
    """Each row finished with one metrics row per epoch, and its line in table.csv filled."""
    with open(out / "table.csv") as f:
        cells = {r[0]: r for r in csv.reader(f)}
    for row in rows:
        assert (out / row / "finished").exists(), row
        assert float(cells[row][2]) >= 0, cells[row]  # best
    return cells


@pytest.mark.slow
def test_parallel_2_runs_two_rows_at_once_into_one_table(tmp_path, capsys, monkeypatch):
    import json

    from gssl_fast import ladder_jobs

    monkeypatch.setattr(ladder_jobs, "visible_gpus", lambda: [])  # on CPU, GPUs or not
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    table = _two_row_table(tmp_path)
    out = tmp_path / "t"
    args = [str(table), "--out", str(out), "--parallel", "2", *_sets("train.epochs=3", "train.steps_per_epoch=12")]
    assert main(args) == 0
    said = capsys.readouterr().out.splitlines()
    starts = [i for i, line in enumerate(said) if ": started" in line]
    ends = [i for i, line in enumerate(said) if ": finished after" in line]
    assert len(starts) == 2 and len(ends) == 2 and max(starts) < min(ends)  # both ran before either ended
    # The runs overlapped: each recorded its recipe (training starts) before the other's last epoch was logged.
    began = [(out / row / "config.toml").stat().st_mtime for row in ("a", "b")]
    logged = [(out / row / "metrics.jsonl").stat().st_mtime for row in ("a", "b")]
    assert max(began) < min(logged)
    for row in ("a", "b"):
        epochs = [json.loads(line)["epoch"] for line in (out / row / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [0, 1, 2]
        log = (out / row / "ladder.log").read_text()
        assert "--set train.num_threads=" in log  # the cores shared between the two
    _complete(out)
    md = (out / "table.md").read_text()
    assert md.count("| row |") == 1 and md.count("\n| a |") == 1 and md.count("\n| b |") == 1  # one table
    assert not list(out.glob(".table.*.tmp"))


def _job_of(run_dir: Path) -> tuple[int, int]:
    """(the submitit task process, the training process) training into ``run_dir``, from /proc."""
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if b"gssl_fast.train" in args and str(run_dir).encode() in args:
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                return parent, int(proc.name)
        except (OSError, ValueError):
            continue
    raise LookupError(run_dir)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the jobs' processes in /proc")
def test_slurm_jobs_one_preempted_one_killed_still_end_in_a_complete_table(tmp_path, capsys, monkeypatch):
    """Two rows as jobs of submitit's LocalExecutor (its real code path, no cluster): row a
    is preempted (the signal Slurm sends: submitit calls RowJob.checkpoint and requeues it),
    row b's job is killed outright (SIGKILL, as a lost node); both end, resumed from their
    checkpoints, and the ladder writes the whole table."""
    import json
    import os
    import signal
    import threading
    import time

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)  # the jobs' preemption signal: SIGUSR2
    table, out = _two_row_table(tmp_path), tmp_path / "t"
    sent, errors = {}, []

    def strike(row: str, sig: int) -> None:
        try:
            deadline = time.monotonic() + 300
            while not list((out / row / "checkpoints").glob("epoch_*.pt")):  # the first epoch is kept
                assert time.monotonic() < deadline, f"{row} wrote no checkpoint"
                time.sleep(0.02)
            task, _ = _job_of(out / row)
            os.kill(task, sig)
            sent[row] = sig
        except Exception as e:  # noqa: BLE001 - said in the test's thread
            errors.append(e)

    strikers = [threading.Thread(target=strike, args=a) for a in (("a", signal.SIGUSR2), ("b", signal.SIGKILL))]
    for t in strikers:
        t.start()
    args = [str(table), "--out", str(out), "--slurm", "local", "--slurm-gpus", "0", "--slurm-time", "30",
            *_sets("train.epochs=4", "train.steps_per_epoch=24", "train.num_threads=1")]
    try:
        assert main(args) == 0
    finally:
        for t in strikers:
            t.join()
    assert not errors, errors
    assert sent == {"a": signal.SIGUSR2, "b": signal.SIGKILL}
    said = capsys.readouterr().out
    assert said.count("submitted job") == 3 and "b: the job died; resubmitted (1 of 2)" in said
    log_a, log_b = ((out / row / "ladder.log").read_text() for row in ("a", "b"))
    assert "stopped by SIGTERM" in log_a and "--resume auto" in log_a and "resumed from" in log_a
    assert "--resume auto" in log_b and "resumed from" in log_b
    for row in ("a", "b"):
        epochs = [json.loads(line)["epoch"] for line in (out / row / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [0, 1, 2, 3], row
    _complete(out)


@pytest.mark.parametrize("extra, named", [
    (["--parallel", "0"], "--parallel 0"),
    (["--parallel", "2", "--slurm", "gpu"], "--slurm gpu"),
    (["--parallel", "2", "--launch", "--num_processes 2"], "--launch"),
    (["--slurm-gpus", "2"], "--slurm-gpus 2"),
    (["--slurm", "gpu", "--slurm-time", "1h"], "--slurm-time '1h'"),
    (["--slurm", "gpu", "--slurm-mem", "0"], "--slurm-mem 0"),
], ids=["parallel 0", "parallel and slurm", "parallel and launch", "slurm-gpus alone", "slurm-time", "slurm-mem"])
def test_side_by_side_flags_are_checked_in_one_line(tmp_path, capsys, extra, named):
    assert main([str(TABLES / "table1.toml"), *TWO_ROWS, "--out", str(tmp_path / "t"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and named in err
    assert not (tmp_path / "t").exists()


def test_parallel_beyond_the_gpus_or_slurm_without_sbatch_is_one_line(tmp_path, capsys, monkeypatch):
    from gssl_fast import ladder_jobs

    monkeypatch.setattr(ladder_jobs, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(ladder_jobs.shutil, "which", lambda name: None)
    args = [str(TABLES / "table1.toml"), *TWO_ROWS, "--out", str(tmp_path / "t")]
    for extra, named in ((["--parallel", "3"], "--parallel 3: this machine has 2 GPUs"),
                         (["--slurm", "gpu"], "--slurm gpu: no sbatch")):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and named in err
        assert not list((tmp_path / "t").glob("*/config.toml"))  # no row ran


def test_slurm_time_reads_minutes_or_days_hours_minutes_seconds():
    from gssl_fast.ladder_jobs import minutes

    assert [minutes(t) for t in ("90", "02:30:00", "1-00:00:00", "00:00:30")] == [90, 150, 1440, 1]


def test_parallel_gives_each_row_a_gpu_of_its_own(tmp_path, monkeypatch):
    """Three rows on two GPUs (as CUDA_VISIBLE_DEVICES names them): two at once, each on
    its own, the third on the one freed; the ladder hears each end."""
    import sys
    from types import SimpleNamespace

    from gssl_fast import ladder_jobs

    monkeypatch.setattr(ladder_jobs, "visible_gpus", lambda: ["3", "5"])
    runner = ladder_jobs.LocalRows(2, tmp_path)
    assert runner.overrides == ()  # on GPUs the rows keep their threads
    rows = [SimpleNamespace(name=n) for n in ("a", "b", "c")]
    show = "import os, time; print('gpu', os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(0.5)"
    ended = []
    ladder_jobs.side_by_side(rows, runner, lambda row, extra: [sys.executable, "-c", show],
                             lambda row, status, message: ended.append((row.name, status)))
    assert sorted(ended) == [("a", 0), ("b", 0), ("c", 0)] and ended[-1][0] == "c"
    gpus = {n: (tmp_path / n / "ladder.log").read_text().split("gpu ")[1].split()[0] for n in ("a", "b", "c")}
    assert {gpus["a"], gpus["b"]} == {"3", "5"} and gpus["c"] in ("3", "5")
