"""The ladder: every table's rows load, the dry run lists Table 1, and two rows run for
one epoch on CIFAR-format files written here, into table.md / table.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from gssl_fast.config import load_recipe
from gssl_fast.ladder import load_table, main, recipe_path, write_table
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


def test_a_row_another_trainer_still_trains_is_skipped_not_started_twice(tmp_path, capsys):
    """A rerun of the ladder while an earlier one's job still trains a row (a Slurm job
    outlives the ladder that submitted it) leaves that row to it."""
    import signal
    import subprocess
    import sys

    from tests.gssl_fast.run.test_folder import HOLD, ROOT

    row = "c10-rho0.01-ldam-drw"
    (tmp_path / "t1" / row).mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "t1" / row)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert main([str(TABLES / "table1.toml"), "--rows", row, "--out", str(tmp_path / "t1"),
                     "--set", f"data.root={tmp_path}"]) == 0
        out = capsys.readouterr().out
        assert f"{row}: being trained (pid {holder.pid} on " in out and "skipped" in out, out
        assert sorted(p.name for p in (tmp_path / "t1" / row).iterdir()) == [".trainer.lock"], "nothing started"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


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
    args = [str(table), "--out", str(out), "--parallel", "2", *_sets("train.epochs=3", "train.steps_per_epoch=60")]
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
    args = [str(table), "--out", str(out), "--slurm", "local", "--slurm-gpus", "0", "--slurm-cpus", "2",
            "--slurm-time", "30",
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
    (["--slurm-cpus", "4"], "--slurm-cpus 4"),
    (["--slurm", "gpu", "--slurm-cpus", "0"], "--slurm-cpus 0"),
], ids=["parallel 0", "parallel and slurm", "parallel and launch", "slurm-gpus alone", "slurm-time", "slurm-mem",
        "slurm-cpus alone", "slurm-cpus"])
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


# Protocols: how a table's numbers are made (report = best | final | median_last_k, evaluate).

def _csv(out: Path) -> dict:
    """table.csv as ``{row: {column: cell}}``."""
    with open(out / "table.csv") as f:
        header, *rows = list(csv.reader(f))
    return {r[0]: dict(zip(header, r)) for r in rows}


def _logged(run_dir: Path, field: str) -> list[float]:
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[field] for r in rows if r.get(field) is not None]


def _cifar(folder: Path, n: int = 200, val: int = 64) -> Path:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 10
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return write_cifar10(folder, images, labels, val_images=images[:val], val_labels=labels[:val])


def test_each_protocol_makes_its_columns_from_the_logged_values(tmp_path):
    """best: the highest and the last; final: the last; median_last_k: numpy's median of
    the last k values logged (of all while fewer are); table.md says each protocol."""
    import json

    table = tmp_path / "t.toml"
    table.write_text('report = "median_last_k"\nk = 3\n'
                     'metrics = ["val_acc1", { field = "val_acc1", report = "final" }, "val_acc5",\n'
                     '           { field = "val_acc1", report = "best" },\n'
                     '           { field = "val_acc5", report = "median_last_k", k = 10 }]\n'
                     '[[rows]]\nname = "a"\nrecipe = "demo"\npaper = [50.0, 50.0, 90.0, 50.0, 90.0]\n')
    loaded = load_table(table)
    assert [(m.field, m.report, m.k) for m in loaded.metrics] == [
        ("val_acc1", "median_last_k", 3), ("val_acc1", "final", 0), ("val_acc5", "median_last_k", 3),
        ("val_acc1", "best", 0), ("val_acc5", "median_last_k", 10)]
    rng = np.random.default_rng(1)
    acc1, acc5 = rng.uniform(0, 100, 7).round(3), rng.uniform(0, 100, 7).round(3)
    (tmp_path / "t" / "a").mkdir(parents=True)
    (tmp_path / "t" / "a" / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "val_acc1": float(a), **({"val_acc5": float(b)} if e % 2 else {})}) + "\n"
        for e, (a, b) in enumerate(zip(acc1, acc5))))
    write_table(loaded, tmp_path / "t")
    cells, logged5 = _csv(tmp_path / "t")["a"], acc5[1::2]  # val_acc5 logged at odd epochs only
    # A field reported twice is headed with its protocol.
    assert float(cells["val_acc1 (median_last_3) median_last_3"]) == pytest.approx(np.median(acc1[-3:]), abs=0.006)
    assert float(cells["val_acc1 (median_last_3) gap"]) == pytest.approx(np.median(acc1[-3:]) - 50, abs=0.011)
    assert float(cells["val_acc1 (final) final"]) == pytest.approx(acc1[-1], abs=0.006)
    assert float(cells["val_acc5 (median_last_3) median_last_3"]) == pytest.approx(np.median(logged5[-3:]), abs=0.006)
    assert float(cells["val_acc1 (best) best"]) == pytest.approx(acc1.max(), abs=0.006)
    assert float(cells["val_acc1 (best) final"]) == pytest.approx(acc1[-1], abs=0.006)
    assert float(cells["val_acc1 (best) gap"]) == pytest.approx(acc1.max() - 50, abs=0.011)
    assert float(cells["val_acc5 (median_last_10) median_last_10"]) == pytest.approx(np.median(logged5), abs=0.006)
    md = (tmp_path / "t" / "table.md").read_text()
    assert "`val_acc1 (median_last_3) median_last_3`: the median of the last 3 values of `val_acc1`" in md
    assert "`val_acc1 (final) final`: the last value of `val_acc1`" in md
    assert "`val_acc1 (best) best`: the highest value of `val_acc1`" in md
    assert "`val_acc5 (median_last_10) median_last_10`: the median of the last 10 values of `val_acc5`" in md


def test_a_rows_evaluation_is_one_call_with_the_options_of_every_metric(tmp_path):
    table = tmp_path / "t.toml"
    table.write_text('set = ["train.epochs=2"]\n'
                     'metrics = [{ field = "pgd20_acc1", evaluate = ["--attack", "pgd20"] },\n'
                     '  { field = "pgd100_acc1", evaluate = ["--attack", "pgd100", "--attack", "pgd20"] },\n'
                     '  { field = "ece", evaluate = ["--calibration"] }]\n'
                     '[[rows]]\nname = "a"\nrecipe = "demo"\nset = ["train.seed=3"]\npaper = [1.0, 2.0, 3.0]\n')
    loaded = load_table(table)
    assert loaded.evaluate == ("--attack", "pgd20", "--attack", "pgd100", "--calibration")
    assert [m.kinds for m in loaded.metrics] == [("evaluate",)] * 3
    assert loaded.rows[0].set == ("train.epochs=2", "train.seed=3")  # the table's overrides, then the row's


@pytest.mark.parametrize("text, named", [
    ('metrics = [{ field = "val_acc1", report = "mean" }]', "metrics entry 1: report must be one of 'best', "
                                                            "'final', 'median_last_k', got 'mean'"),
    ('metrics = [{ field = "val_acc1", report = "median_last_k" }]', "metrics entry 1: report = \"median_last_k\" "
                                                                     "needs k"),
    ('metrics = [{ field = "val_acc1", report = "median_last_k", k = 0 }]', "needs k, how many of the last values"),
    ('metrics = [{ field = "val_acc1", k = 5 }]', "metrics entry 1: k counts the values of report = "
                                                  "\"median_last_k\", not of 'best'"),
    ('metrics = ["best_val_acc1", { field = "val_acc1", reprot = "final" }]', "unknown key 'reprot' in "
                                                                              "{path} metrics entry 2"),
    ('metrics = [{ report = "final" }]', "metrics entry 1: field must name a metrics.jsonl field"),
    ('metrics = [{ field = "pgd20_acc1", evaluate = ["--attack", "pgd7"] }]',
     "metrics entry 1: evaluate must hold options of python -m gssl_fast.evaluate"),
    ('metrics = [{ field = "pgd20_acc1", evaluate = "--attack pgd20" }]', "evaluate must be a list of options"),
    ('metrics = [{ field = "pgd20_acc1", evaluate = ["--attack", "pgd20"], report = "best" }]',
     "metrics entry 1: report does not go with evaluate"),
    ('report = "last"\nmetrics = ["val_acc1"]', "{path}: report must be one of"),
    ('k = 10\nmetrics = ["val_acc1"]', "{path}: k = 10 counts the values of report = \"median_last_k\", which no "
                                       "metric has"),
    ('protocol = "best"\nmetrics = ["val_acc1"]', "unknown key 'protocol' in {path}; valid keys: title, metrics, "
                                                  "report, k, set, rows"),
    ('set = "train.epochs=2"\nmetrics = ["val_acc1"]', "{path}: set must be a list of KEY=VALUE overrides"),
], ids=["report", "median without k", "k of 0", "k without median", "unknown key", "no field", "bad attack",
        "evaluate not a list", "evaluate and report", "table report", "table k unused", "unknown table key",
        "table set"])
def test_a_table_file_error_is_one_line_naming_the_file_and_the_key(tmp_path, capsys, text, named):
    table = tmp_path / "t.toml"
    table.write_text(text + '\n[[rows]]\nname = "a"\nrecipe = "demo"\npaper = 1.0\n')
    assert main([str(table), "--dry-run", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(table) in err
    assert named.format(path=table) in err, err


def test_the_output_of_a_start_is_read_back_from_the_rows_log(tmp_path):
    import sys

    from gssl_fast.ladder_jobs import output_of, start_logged

    log = tmp_path / "row" / "ladder.log"
    said = [sys.executable, "-c", "print('acc1 12.50'); print('pgd20_acc1 3.25')"]
    for cmd in ([sys.executable, "-c", "print('train')"], said, [sys.executable, "-c", "print('after')"]):
        proc, _ = start_logged(cmd, log)
        proc.wait()
    assert output_of(log, said).split() == ["acc1", "12.50", "pgd20_acc1", "3.25"]
    assert output_of(log, [sys.executable, "-c", "print('never')"]) is None


def _evaluate(run_dir: Path, *args: str) -> dict[str, str]:
    """What ``python -m gssl_fast.evaluate run_dir args`` prints, ``{name: text}``."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "gssl_fast.evaluate", str(run_dir), *args], capture_output=True,
                          text=True, check=True)
    return dict(line.split() for line in done.stdout.splitlines())


@pytest.mark.slow
def test_table2_robust_columns_are_evaluate_of_the_final_checkpoint_over_the_whole_split(tmp_path, capsys):
    """A PGD-trained row of Table 2 (tiny): training attacks nothing; the ladder runs
    gssl_fast.evaluate once on the final checkpoint, its numbers are those the command
    prints, a rerun does not attack again unless the checkpoint changed."""
    import json
    import os

    root = _cifar(tmp_path / "cifar", val=16)  # the whole split, PGD-100 included, in seconds
    out, row = tmp_path / "t2", "pgd-training"
    args = [str(TABLES / "table2.toml"), "--rows", row, "--out", str(out)]
    args += _sets(f"data.root={root}", "model.backbone=resnet8_cifar", "train.epochs=2", "train.steps_per_epoch=1",
                  "train.global_batch_size=32", "train.num_threads=1", "method.steps=1")
    assert main(args) == 0
    said = capsys.readouterr().out
    assert said.count("gssl_fast.evaluate") == 1
    logged = [json.loads(line) for line in (out / row / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 2 and not any("pgd" in key for r in logged for key in r)  # training attacked nothing
    printed = _evaluate(out / row, "--attack", "pgd20", "--attack", "pgd100")
    cells = _csv(out)[row]
    assert cells["pgd20_acc1 evaluate"] == printed["pgd20_acc1"]
    assert cells["pgd100_acc1 evaluate"] == printed["pgd100_acc1"]
    assert cells["val_acc1 final"] == f"{_logged(out / row, 'val_acc1')[-1]:.2f}" == printed["acc1"]
    assert float(cells["pgd20_acc1 gap"]) == pytest.approx(float(printed["pgd20_acc1"]) - 46.5, abs=0.011)
    md = (out / "table.md").read_text()
    assert ("`pgd20_acc1 evaluate`: `pgd20_acc1` as `python -m gssl_fast.evaluate ROW --attack pgd20 --attack "
            "pgd100` prints it on the row's final checkpoint, the whole validation split") in md
    assert _csv(out)["rotations (cited)"]["pgd20_acc1 evaluate"] == ""
    kept = (out / row / "evaluate.json").stat().st_mtime_ns
    assert main(args) == 0  # finished and evaluated: nothing runs
    assert "gssl_fast.evaluate" not in capsys.readouterr().out
    assert (out / row / "evaluate.json").stat().st_mtime_ns == kept
    newest = sorted((out / row / "checkpoints").glob("epoch_*.pt"))[-1]
    os.utime(newest, ns=(newest.stat().st_atime_ns, newest.stat().st_mtime_ns + 10**9))  # a newer checkpoint
    assert main(args) == 0
    assert capsys.readouterr().out.count("gssl_fast.evaluate") == 1
    assert _csv(out)[row]["pgd20_acc1 evaluate"] == printed["pgd20_acc1"]


@pytest.mark.slow
def test_table3_reports_the_median_of_the_last_10_epochs_of_a_bicubic_stream(tmp_path):
    from gssl_fast.config import load_recipe
    from pipelines.datasets.testing import write_tinyimagenet

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20 + i % 3, 24, 3), dtype=np.uint8) for i in range(48)]
    labels = np.arange(48) % 3
    root = write_tinyimagenet(tmp_path / "tiny", images[:36], labels[:36], images[36:], labels[36:])
    out, row = tmp_path / "t3", "baseline"
    args = [str(TABLES / "table3.toml"), "--rows", row, "--out", str(out)]
    args += _sets(f"data.root={root}", "data.image_size=16", "data.workers=1", "model.backbone=resnet8_cifar",
                  "train.epochs=12", "train.steps_per_epoch=1", "train.global_batch_size=12", "train.num_threads=1")
    assert main(args) == 0
    ran = load_recipe(out / row / "config.toml").data
    assert (ran.stream, ran.crop, ran.crop_interpolation, ran.val_crop_fraction) == (True, "random_resized",
                                                                                     "bicubic", 1.0)
    values = _logged(out / row, "val_acc1")
    assert len(values) == 12
    cells = _csv(out)[row]
    assert cells["val_acc1 median_last_10"] == f"{np.median(values[-10:]):.2f}"
    assert "`val_acc1 median_last_10`: the median of the last 10 values" in (out / "table.md").read_text()


@pytest.mark.slow
def test_table4_reports_the_median_of_the_last_20_evaluations(tmp_path):
    root = _cifar(tmp_path / "cifar")
    out, row = tmp_path / "t4", "fixmatch"
    args = [str(TABLES / "table4.toml"), "--rows", row, "--out", str(out)]
    args += _sets(f"data.root={root}", "model.backbone=resnet8_cifar", "model.kwargs={}", "method.num_labels=40",
                  "method.mu=2", "train.steps=22", "train.steps_per_epoch=1", "train.global_batch_size=8",
                  "train.num_threads=1")
    assert main(args) == 0
    values = _logged(out / row, "val_acc1")
    assert len(values) == 22
    assert _csv(out)[row]["val_acc1 median_last_20"] == f"{np.median(values[-20:]):.2f}"


@pytest.mark.slow
def test_rows_side_by_side_are_evaluated_side_by_side_after_training(tmp_path, capsys, monkeypatch):
    """--parallel 2: each row's evaluation runs as the rows ran (a process of its own,
    its output in the row's ladder.log), and the table takes what it printed."""
    from gssl_fast import ladder_jobs
    from tests.gssl_fast.tiny import write_tiny

    monkeypatch.setattr(ladder_jobs, "visible_gpus", lambda: [])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    write_tiny(tmp_path)
    table = tmp_path / "two.toml"
    table.write_text('metrics = [{ field = "val_acc1", report = "final" },\n'
                     '           { field = "pgd20_acc1", evaluate = ["--attack", "pgd20"] }]\n'
                     '[[rows]]\nname = "a"\nrecipe = "tiny.toml"\npaper = [10.0, 1.0]\n'
                     '[[rows]]\nname = "b"\nrecipe = "tiny.toml"\nset = ["train.seed=1"]\npaper = [20.0, 2.0]\n')
    out = tmp_path / "t"
    assert main([str(table), "--out", str(out), "--parallel", "2", *_sets("data.val_size=16")]) == 0
    said = capsys.readouterr().out
    assert said.count(": started") == 4 and said.count(": finished after") == 4  # two trainings, two evaluations
    cells = _csv(out)
    for row in ("a", "b"):
        log = (out / row / "ladder.log").read_text()
        assert "-m gssl_fast.evaluate" in log and "pgd20_acc1 " in log
        printed = _evaluate(out / row, "--attack", "pgd20")
        assert cells[row]["pgd20_acc1 evaluate"] == printed["pgd20_acc1"]
        assert cells[row]["val_acc1 final"] == printed["acc1"]
