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
