"""The report of a run: every figure the page shows is a real, non-blank image, and the
page renders in a real headless browser (Debian's chromium, installed by `make test-all`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

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
    assert {"train.png", "val.png", "gate.png", "pretext.png", "gradcam.png", "tsne_0.png", "tsne_1.png"} <= set(images)
    for name in images:
        assert (out / name).is_file() and not_blank(out / name), name
    assert "gssl" in page and "plain" in page and "<table>" in page


def test_a_folder_without_a_run_is_a_user_error(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is installed by `make test-all`")
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


@pytest.fixture(scope="module")
def other_val(runs, tmp_path_factory):
    """A run like ``runs``' but on another draw of the built-in data: other validation images."""
    tmp = tmp_path_factory.mktemp("other")
    recipe = write_tiny(tmp)
    assert train_main([str(recipe), "--out", str(tmp / "other-data"), "--set", "data.seed=1"]) == 0
    return tmp / "other-data"


def test_runs_on_different_validation_images_get_a_gradcam_grid_each(runs, other_val, tmp_path, capsys):
    out = tmp_path / "report"
    assert report_main([*map(str, runs), str(other_val), "--out", str(out), "--images", "2", "--tsne", "32"]) == 0
    assert "validation" in capsys.readouterr().err  # the command line says why there are several grids
    page = (out / "index.html").read_text()
    grids = [src for src in re.findall(r'<img src="([^"]+)"', page) if src.startswith("gradcam")]
    assert len(grids) == 2 and "gradcam.png" not in grids
    captions = {src: cap for src, cap in re.findall(r'<img src="(gradcam[^"]+)"[^>]*><figcaption>([^<]+)<', page)}
    first, second = (captions[g] for g in grids)
    assert "gssl" in first and "plain" in first and "other-data" not in first
    assert "other-data" in second and "plain" not in second
    # The first grid has a column per run of its group beside the images: three, the second two.
    widths = [Image.open(out / g).size[0] for g in grids]
    assert widths[0] > 1.3 * widths[1]
    assert re.search(r"<p[^>]*>[^<]*validation images differ", page)


def test_runs_on_the_same_validation_images_share_one_grid(runs, tmp_path):
    out = tmp_path / "report"
    assert report_main([*map(str, runs), "--out", str(out), "--images", "2", "--tsne", "32"]) == 0
    page = (out / "index.html").read_text()
    assert [s for s in re.findall(r'<img src="([^"]+)"', page) if s.startswith("gradcam")] == ["gradcam.png"]
    assert "validation images differ" not in page


def test_gradcam_titles_are_whole_and_fit_their_column():
    from gssl_fast.analysis.figures import CamColumn, draw_gradcam

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    classes = ["a_very_long_class_name_for_a_tile", "b", "c"]
    names = ["c10-rho0.01-gssl-rot-flip-seed1", "c10-rho0.01-ldam-drw", "x"]
    columns = [CamColumn(name, images, np.array([0, 1, 2]), classes, rng.random((3, 16, 16))) for name in names]
    fig = draw_gradcam(columns)
    fig.canvas.draw()
    titled = [ax for ax in fig.axes if ax.get_title()]
    # Whole: the old grid cut run names at 14 characters and class names at 12.
    assert {ax.get_title().replace("\n", "") for ax in titled} == {*classes, *names}
    column = fig.get_size_inches()[0] * fig.dpi / (1 + len(names))  # pixels from one column to the next
    for ax in titled:
        assert ax.title.get_window_extent(fig.canvas.get_renderer()).width <= column, ax.get_title()


class Figures(HTMLParser):
    """Each <img> of a page with the last heading before it and its <figcaption>'s text."""

    def __init__(self):
        super().__init__()
        self.heading, self.tag, self.figures, self.h2 = None, None, [], []

    def handle_starttag(self, tag, attrs):
        self.tag = tag
        if tag == "img":
            self.figures.append({"src": dict(attrs)["src"], "heading": self.heading, "caption": ""})
            self.heading = None  # a figure's heading is its own

    def handle_endtag(self, tag):
        self.tag = None

    def handle_data(self, data):
        if self.tag in ("h2", "h3"):
            self.heading = data
            if self.tag == "h2":
                self.h2.append(data)
        elif self.tag == "figcaption" and self.figures:
            self.figures[-1]["caption"] += data


def test_every_figure_has_a_heading_and_a_one_line_caption_saying_what_it_shows(runs, tmp_path):
    out = tmp_path / "report"
    assert report_main([*map(str, runs), "--out", str(out), "--images", "2", "--tsne", "32"]) == 0
    page = Figures()
    page.feed((out / "index.html").read_text())
    assert len(page.figures) >= 7 and len(page.h2) >= 3
    for fig in page.figures:
        caption = fig["caption"].strip()
        assert fig["heading"], fig["src"]
        assert caption and "\n" not in caption and fig["src"] not in caption and len(caption.split()) >= 5, fig
