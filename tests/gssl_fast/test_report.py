"""The report of a run: every figure the page shows is a real, non-blank image, and the
page renders in a real headless browser (Debian's chromium, installed by `make test`)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from gssl_fast.report import main as report_main
from gssl_fast.train import main as train_main
from tests.gssl_fast.tiny import write_tiny

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    recipe, two = write_tiny(tmp), ["--set", "train.epochs=2"]
    assert train_main([str(recipe), "--out", str(tmp / "gssl"), *two]) == 0
    assert train_main([str(recipe), "--out", str(tmp / "plain"), "--set", "pretext.tasks=[]", *two]) == 0
    return tmp / "gssl", tmp / "plain"


def not_blank(path) -> bool:
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    return pixels.std() > 5


def test_report_of_two_runs_shows_every_figure(runs, tmp_path):
    out = tmp_path / "report"
    assert report_main([*map(str, runs), "--out", str(out), "--images", "4", "--tsne", "64"]) == 0
    page = (out / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {"loss.png", "accuracy.png", "gates.png", "pretext.png", "gradcam.png", "tsne_0.png", "tsne_1.png"} <= set(images)
    for name in images:
        assert (out / name).is_file() and not_blank(out / name), name
    assert "gssl" in page and "plain" in page and "<table>" in page


def test_a_folder_without_a_run_is_a_user_error(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is installed by `make test`")
def test_the_page_renders_in_a_headless_browser(runs, tmp_path):
    out = tmp_path / "report"
    assert report_main([str(runs[0]), "--out", str(out), "--images", "2", "--tsne", "64"]) == 0
    shot = tmp_path / "page.png"
    done = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1800",
                           f"--screenshot={shot}", (out / "index.html").as_uri()], capture_output=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-500:]
    assert not_blank(shot)
    # The browser drew the figures: the page has far more colours than text on white.
    colours = len(np.unique(np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3), axis=0))
    assert colours > 500


def test_the_table_shows_the_papers_number_of_runs_named_as_ladder_rows(runs, tmp_path):
    table = tmp_path / "t.toml"
    table.write_text('metrics = ["best_val_acc1"]\n[[rows]]\nname = "gssl"\nrecipe = "demo"\npaper = 12.5\n')
    out = tmp_path / "report"
    assert report_main([*map(str, runs), "--out", str(out), "--images", "2", "--tsne", "32", "--table", str(table)]) == 0
    row = next(r for r in (out / "index.html").read_text().split("<tr>") if r.startswith("<td>gssl"))
    assert "<td>12.50</td>" in row
