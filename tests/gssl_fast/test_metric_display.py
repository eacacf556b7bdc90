"""A method's metrics say how they are shown (``Method.metrics``: label, group, unit,
format): the epoch line and the report show them by what the method declares and know
no method's metric names."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from gssl_fast.methods import METHODS, method_class, register_method
from gssl_fast.methods.base import GENERIC_METRICS, Metric, Method
from gssl_fast.run.log import MetricsLog
from gssl_fast.run.progress import LOOP_FIELDS, summary_line
from gssl_fast.report import curve_figures, declared_metrics, runs_table
from tests.gssl_fast.tiny import write_tiny

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SharpConfig:
    name: str = "sharp"


class Sharp(Method):
    """A method of this file: it logs a sharpness and a blur radius of its own."""

    name = "sharp"
    Config = SharpConfig

    @classmethod
    def metrics(cls):
        about = "How sharp the validation images look (%) and how wide a blur would make them so."
        return {**super().metrics(), "val_sharpness": Metric("sharpness", "focus", "%", ".1f", about=about),
                "blur": Metric("blur radius", "focus", about=about)}


@pytest.fixture
def sharp():
    register_method(Sharp)
    yield Sharp
    METHODS.pop("sharp")


def loop_row(epoch: int = 0, **fields) -> dict:
    """A metrics.jsonl row: the loop's own fields and ``fields``."""
    return {"epoch": epoch, "lr": 0.1, "train_loss": 1.2345, **fields, "best_val_acc1": 50.0, "best_epoch": 0,
            "train_images": 64, "images_per_s": 1000.0, "seconds": 2.0, "world_size": 1, "threads": 1}


def test_a_method_of_a_test_file_gets_its_metric_shown_in_the_epoch_line_with_its_label():
    row = loop_row(4, loss_side=0.5, val_acc1=50.0, val_sharpness=12.345, blur=0.5)
    line = summary_line(row, 10, train_keys=["train_loss", "loss_side"], metrics=Sharp.metrics())
    assert line.startswith("epoch 5/10: loss 1.234 (loss_side 0.5) val top-1 50.00% | focus sharpness 12.3% "
                           "blur radius 0.5 | 1000 img/s")
    assert "val_sharpness" not in line
    # Undeclared (no declarations given), a number is shown under its own name.
    assert "| val_sharpness 12.35 blur 0.5 |" in summary_line(row, 10, train_keys=["train_loss", "loss_side"])


def run_folder(tmp_path: Path, name: str, method: str | None, rows: list[dict]) -> Path:
    run = tmp_path / name
    run.mkdir()
    if method is not None:
        (run / "config.toml").write_text(f'[method]\nname = "{method}"\n')
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_the_report_finds_a_runs_declarations_from_its_config_and_shows_them_with_their_labels(
        sharp, tmp_path, capsys):
    rows = [loop_row(e, val_acc1=40.0 + e, val_sharpness=10.0 + e, blur=1.0 / (e + 1)) for e in range(3)]
    run = run_folder(tmp_path, "sharp-run", "sharp", rows)
    plain = run_folder(tmp_path, "old-run", None, [loop_row(0, val_acc1=30.0, val_sharpness=99.0)])
    declared = {r.name: declared_metrics(r) for r in (run, plain)}
    assert declared["sharp-run"]["val_sharpness"].label == "sharpness"
    assert declared["old-run"] == GENERIC_METRICS  # no config.toml: the generic display
    assert "old-run" in capsys.readouterr().err
    logs = {r.name: MetricsLog(r / "metrics.jsonl").read() for r in (run, plain)}
    table = runs_table([run, plain], logs, {}, declared)
    assert "<th>focus</th>" in table
    cells = re.findall(r"<tr>(.*?)</tr>", table)
    assert "<td>sharpness 12.0% blur radius 0.3333</td>" in cells[1] and "sharpness" not in cells[2]
    out = tmp_path / "report"
    out.mkdir()
    figures = {f.file: f for f in curve_figures(logs, out, declared)}
    assert figures["focus.png"].heading == "Focus" and "How sharp" in figures["focus.png"].caption
    assert (out / "focus.png").is_file() and {"train.png", "val.png"} <= set(figures)


def test_a_run_whose_method_is_not_registered_here_is_shown_with_the_generic_metrics(tmp_path, capsys):
    run = run_folder(tmp_path, "elsewhere", "sharp", [loop_row(0, val_acc1=30.0, val_sharpness=99.0)])
    assert declared_metrics(run) == GENERIC_METRICS
    assert "unknown method.name 'sharp'" in capsys.readouterr().err
    assert "sharpness" not in runs_table([run], {"elsewhere": [loop_row(0, val_sharpness=99.0)]}, {},
                                         {"elsewhere": declared_metrics(run)})


@pytest.mark.parametrize("name", ["supervised", "adversarial", "fixmatch", "simclr"])
def test_every_method_declares_its_metrics_without_being_built(name):
    metrics = method_class(name).metrics()
    assert set(GENERIC_METRICS) <= set(metrics) and not set(metrics) & (LOOP_FIELDS - {"train_loss"})
    assert all(isinstance(m, Metric) and m.label and isinstance(m.group, str) for m in metrics.values())


GSSL = {"loss_cls": 1.0, "loss_ssl": 0.5, "loss_rotation": 0.5, "gate": {"rotation": 0.5, "flip": 0.25},
        "pretext_acc": {"rotation": 95.0, "flip": 50.0}}
# The fields each built-in method logs (names as their code writes them) and a piece of its epoch line.
BUILT_IN = {
    "supervised": (GSSL, {"val_acc1": 88.0, "val_acc5": 99.0, "val_per_class": [80.0, None], "val_many_shot": 90.0,
                          "val_medium_shot": 80.0, "val_few_shot": None},
                   "val top-1 88.00% top-5 99.00% | shots many 90.00% medium 80.00% | gate rotation 0.500 flip 0.250 "
                   "| pretext rotation 95.00% flip 50.00% |"),
    "adversarial": (GSSL, {"val_acc1": 88.0, "val_acc5": 99.0, "val_pgd20_acc1": 40.0, "val_pgd100_acc1": 39.0,
                           "val_robust_images": 1000},
                    "| robust pgd20 40.00% pgd100 39.00% images 1000 | gate rotation 0.500"),
    "fixmatch": ({"loss_x": 0.5, "loss_u": 0.25, "mask_rate": 0.8125, "pseudo_acc": 91.23456, **GSSL},
                 {"val_acc1": 88.0, "val_acc5": 99.0, "val_raw_acc1": 87.0, "val_raw_acc5": 98.0,
                  "val_raw_per_class": [80.0]},
                 "(loss_x 0.5 loss_u 0.25 mask_rate 0.8125 pseudo_acc 91.23% loss_cls 1 loss_ssl 0.5 loss_rotation "
                 "0.5) val top-1 88.00% top-5 99.00% | raw weights top-1 87.00% top-5 98.00% | gate"),
    "simclr": ({"loss_p1": 0.5, "guided_max_repeat": 3.25, "guided_in_plan": 1.0, "guided_excess": 0.0},
               {"val_acc1": 70.0, "val_mse": 0.00234, "val_knn_acc1": 85.0, "holdout_p1_acc1": 71.0,
                "val_p1_acc1": 70.0, "selected_p1_acc1": 69.0, "selected_p1_epoch": 3, "finetune_acc1": 70.0},
               "(loss_p1 0.5) val top-1 70.00% MSE 0.00234 | kNN top-1 85.00% | guided max repeat 3.25 in plan 1 "
               "excess 0 | P1 holdout 71.00% val 70.00% selected 69.00% selected epoch 3 | 1000 img/s"),
}


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_the_built_in_methods_epoch_lines_show_every_field_they_log_by_its_label(name):
    trained, evaluated, piece = BUILT_IN[name]
    line = summary_line(loop_row(9, **trained, **evaluated), 10, train_keys=["train_loss", *trained],
                        metrics=method_class(name).metrics())
    assert line.startswith("epoch 10/10: loss 1.234 ") and piece in line, line
    assert not re.search(r"val_|_acc1|_epoch|guided_|pretext_acc", line), line


def test_a_real_runs_fields_are_all_declared_by_its_method(tmp_path):
    from gssl_fast.train import main

    recipe = write_tiny(tmp_path, before='[method]\nname = "adversarial"\nsteps = 1\neval_images = 8\n'
                        'eval_attacks = ["pgd20"]\n[pretext]\ntasks = ["rotation"]\n')
    assert main([str(recipe), "--out", str(tmp_path / "run"), "--set", "train.steps_per_epoch=1"]) == 0
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    metrics = declared_metrics(tmp_path / "run")
    assert metrics == method_class("adversarial").metrics()
    trained = ["loss_cls", "loss_ssl", "loss_rotation"]  # the G-SSL losses: training scalars shown by their names
    assert set(row) <= LOOP_FIELDS | set(metrics) | set(trained)
    line = summary_line(row, 1, train_keys=["train_loss", *trained, "gate", "pretext_acc"], metrics=metrics)
    assert "| robust pgd20 " in line and "| gate rotation " in line and "val_" not in line


def test_the_report_and_the_epoch_line_know_no_methods_metric_names():
    for module in ("report.py", "run/progress.py"):
        text = (ROOT / "gssl_fast" / module).read_text().lower()
        found = [word for word in ("pgd", "knn", "holdout", "selected_", "pseudo", "pretext_acc", "finetune_acc")
                 if word in text]
        assert found == [], (module, found)
