"""Where a run stands: the bar on whichever stream is a terminal, the evaluation's
progress, one number format in the epoch line, and the summary that ends a run."""

from __future__ import annotations

import io
import sys

from gssl_fast.run.progress import Progress, number, summary_line
from gssl_fast.train import main
from tests.gssl_fast.tiny import write_tiny


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_is_drawn_on_stdout_when_only_stdout_is_a_terminal(monkeypatch):
    """``accelerate launch`` with one process pipes the trainer's stderr through itself."""
    out, err = Terminal(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    progress = Progress(4, desc="epoch 1/1")
    for _ in range(4):
        progress.update(8)
    progress.close()
    assert progress.bar is not None and "4/4" in out.getvalue() and err.getvalue() == ""


def test_plain_lines_when_no_stream_is_a_terminal(monkeypatch):
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    progress = Progress(20, desc="epoch 1/1")
    for _ in range(20):
        progress.update(8)
    assert progress.bar is None and err.getvalue().count("\n") == 10 and "step 20/20" in err.getvalue()


def test_one_number_format_and_the_methods_training_scalars_in_the_epoch_line():
    row = {"epoch": 4, "train_loss": 0.123456, "loss_x": 0.5, "loss_u": 0.25, "mask_rate": 0.8125,
           "pseudo_acc": 91.23456, "val_acc1": 88.0, "selected_p1_epoch": 49.0, "selected_p1_acc1": 70.0,
           "images_per_s": 1000.0, "seconds": 2.0}
    line = summary_line(row, 10, train_keys=["train_loss", "loss_x", "loss_u", "mask_rate", "pseudo_acc"])
    assert line.startswith("epoch 5/10: loss 0.1235 (loss_x 0.5 loss_u 0.25 mask_rate 0.8125 pseudo_acc 91.23)")
    assert "selected_p1_epoch 49 " in line and "selected_p1_acc1 70.00" in line and "49.0000" not in line
    assert number("val_acc1", 100.0) == "100.00" and number("epoch", 3.0) == "3" and number("lr", 0.05) == "0.05"


def test_a_run_ends_with_a_summary_of_where_it_stands(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([str(write_tiny(tmp_path)), "--out", str(run), "--set", "train.steps_per_epoch=2",
                 "--set", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    summary = out[out.index(f"finished {run}"):].splitlines()
    assert "best val top-1" in summary[0] and "at epoch" in summary[0] and "final" in summary[0]
    assert "train img/s" in summary[0] and "this start" in summary[0]
    assert summary[1].split() == ["checkpoint", str(run / "checkpoints" / "epoch_0002.pt")]
    assert summary[2].split() == ["metrics", str(run / "metrics.jsonl")]
    assert summary[4].split() == ["report", "python", "-m", "gssl_fast.report", str(run)]


def test_evaluate_shows_the_progress_of_each_pass(tmp_path, capsys):
    from gssl_fast.evaluate import main as evaluate

    run = tmp_path / "run"
    assert main([str(write_tiny(tmp_path)), "--out", str(run), "--set", "train.steps_per_epoch=1"]) == 0
    capsys.readouterr()
    assert evaluate([str(run), "--attack", "pgd20", "--batch-size", "16", "--limit", "32"]) == 0
    captured = capsys.readouterr()
    assert "clean step 4/4" in captured.err and "pgd20 step 2/2" in captured.err
    assert captured.out.splitlines()[-1].startswith("pgd20_acc1 ")
