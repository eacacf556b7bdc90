"""A report of what training did: PNG figures and one ``index.html`` for one or more runs.

    python -m gssl_fast.report RUN_DIR [RUN_DIR ...] [--out DIR] [--images 8] [--tsne 500] [--table FILE]

- curves: training loss and validation accuracy per epoch; the gate value of each task per
  epoch (the long paper's Figure 6); each pretext head's accuracy; robust accuracy when the
  runs have it; per-class accuracy of the last epoch, and the shot groups of long-tailed runs;
- Grad-CAM (the ``grad-cam`` package) on the last conv layer of each run's backbone, for a
  fixed set of validation images, one column per run (Figure 7); runs whose validation
  images differ (another dataset, seed or size) get a grid each, so that a row is one image;
- t-SNE (scikit-learn) of the pooled validation features, coloured by class (Figure 8);
- a side-by-side table of the runs, with many / medium / few-shot accuracy of long-tailed
  runs and, with ``--table`` (a ladder table file), the paper's number of each run whose
  folder is named after a row (as the ladder names them).
Each figure has a heading and a one-line caption on the page. Works offline on any run
folder; the default output folder is ``<first run>/report``.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.errors import UserError
from gssl_fast.metrics import MetricsLog


@dataclass(frozen=True)
class PageFigure:
    """A PNG of the report with the heading and the one-line caption the page shows it with."""

    file: str
    heading: str
    caption: str


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict], key: str, sub: str | None = None) -> tuple[list[int], list[float]]:
    pairs = [(r["epoch"] + 1, r[key][sub] if sub else r[key]) for r in rows
             if key in r and (sub is None or sub in r[key]) and (sub or isinstance(r[key], (int, float)))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def curve_figures(logs: dict[str, list[dict]], out: Path) -> list[PageFigure]:
    """PNG files of the per-epoch curves, those the runs have data for."""
    plt = _plt()
    figures = []

    def panel(figure: PageFigure, title: str, lines: list[tuple[str, str, str | None]]):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        drawn = False
        for label, key, sub in lines:
            x, y = _series(logs[label.split(" | ")[0]], key, sub)
            if x:
                ax.plot(x, y, marker="o" if len(x) < 30 else None, label=label)
                drawn = True
        if drawn:
            ax.set_title(title), ax.set_xlabel("epoch"), ax.legend(fontsize=7), ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(out / figure.file, dpi=100)
            figures.append(figure)
        plt.close(fig)

    runs = list(logs)
    tasks = sorted({t for rows in logs.values() for r in rows for t in r.get("gate", {})})
    panel(PageFigure("loss.png", "Training loss", "Training loss per epoch (the mean over its steps), a line per "
                     "run."), "training loss", [(run, "train_loss", None) for run in runs])
    panel(PageFigure("accuracy.png", "Validation accuracy", "Validation top-1 accuracy (%) after each epoch, a line "
                     "per run."), "validation top-1 %", [(run, "val_acc1", None) for run in runs])
    panel(PageFigure("gates.png", "Gate values (Figure 6)", "The gate's weight on each pretext task's loss per epoch, "
                     "a line per run and task."), "gate value per task (Figure 6)",
          [(f"{run} | {t}", "gate", t) for run in runs for t in tasks])
    panel(PageFigure("pretext.png", "Pretext heads", "Accuracy (%) of each pretext head on its pseudo-labels per "
                     "epoch, a line per run and task."), "pretext head accuracy %",
          [(f"{run} | {t}", "pretext_acc", t) for run in runs for t in tasks])
    robust = sorted({k for rows in logs.values() for r in rows for k in r if k.startswith("val_pgd")
                     and k.endswith("_acc1")})
    panel(PageFigure("robust.png", "Robust accuracy", "Validation top-1 accuracy (%) under each PGD attack per epoch, "
                     "a line per run and attack."), "robust top-1 %",
          [(f"{run} | {k[4:-5]}", k, None) for run in runs for k in robust])
    figures += per_class_figure(logs, out, plt)
    return figures


def per_class_figure(logs: dict[str, list[dict]], out: Path, plt) -> list[PageFigure]:
    last = {run: rows[-1] for run, rows in logs.items() if rows and rows[-1].get("val_per_class")}
    if not last:
        return []
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(last)
    for i, (run, row) in enumerate(last.items()):
        acc = [np.nan if a is None else a for a in row["val_per_class"]]
        ax.bar(np.arange(len(acc)) + i * width, acc, width, label=run)
    ax.set_title("per-class validation top-1 %, last epoch"), ax.set_xlabel("class"), ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "per_class.png", dpi=100)
    plt.close(fig)
    return [PageFigure("per_class.png", "Per-class accuracy", "Validation top-1 accuracy (%) of each class at the "
                       "last epoch, a bar colour per run.")]


def _load(run: Path):
    from gssl_fast.inference import load_for_evaluation

    recipe, _, model, val = load_for_evaluation(run)
    return recipe, model, val


@dataclass(frozen=True)
class CamColumn:
    """One run's Grad-CAM: ``images`` uint8 [N, H, W, 3], the validation images it was
    computed on, their ``labels`` int [N] (indices of ``classes``), ``maps`` float [N, H, W]
    in [0, 1]."""

    run: str
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    maps: np.ndarray

    def image_key(self) -> str:
        """The same for two columns exactly when they show the same images with the same labels."""
        digest = hashlib.sha1(repr((self.images.shape, list(self.classes))).encode())
        digest.update(np.ascontiguousarray(self.images).tobytes())
        digest.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        return digest.hexdigest()


def gradcam_column(run: Path, count: int) -> CamColumn:
    """Grad-CAM of the true class on the last conv layer of ``run``'s model for ``count``
    validation images spread over its split."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from gssl_fast.inference import Classifier
    from gssl_fast.models import last_conv_name

    _, model, val = _load(run)
    idx = np.linspace(0, len(val.labels) - 1, count).astype(int)
    pixels = torch.from_numpy(val.images[idx]).permute(0, 3, 1, 2).float() / 255.0
    layer = dict(model.backbone.named_modules())[last_conv_name(model.backbone)]
    with GradCAM(model=Classifier(model), target_layers=[layer]) as cam:
        maps = cam(input_tensor=pixels, targets=[ClassifierOutputTarget(int(y)) for y in val.labels[idx]])
    return CamColumn(run.name, val.images[idx], val.labels[idx], list(val.classes), maps)


def _wrap(text: str, width: int) -> str:
    # Run names are long and hyphenated (c10-rho0.01-gssl-rot-flip): broken over lines, never cut short.
    return textwrap.fill(text, width, break_on_hyphens=True, break_long_words=True) or text


def draw_gradcam(columns: list[CamColumn]):
    """A grid of the images of ``columns`` (which must share them): one row per image,
    the image and its class first, then each run's Grad-CAM over it. Returns the figure."""
    plt = _plt()
    first, wide = columns[0], 16  # characters a 1.6-inch column holds at 7 points
    count, titles = len(first.labels), [_wrap(c.run, wide) for c in columns]
    lines = max(t.count("\n") + 1 for t in titles)
    fig, axes = plt.subplots(count, len(columns) + 1, figsize=(1.6 * (len(columns) + 1), 1.6 * count + 0.15 * lines),
                             squeeze=False)
    for row in range(count):
        image = first.images[row] / 255.0
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(_wrap(first.classes[first.labels[row]], wide + 2), fontsize=6)
        for col, column in enumerate(columns, start=1):
            axes[row, col].imshow(image)
            axes[row, col].imshow(column.maps[row], cmap="jet", alpha=0.45)
    for col, title in enumerate(titles, start=1):
        axes[0, col].set_title(title, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def gradcam_figures(runs: list[Path], out: Path, count: int) -> tuple[list[PageFigure], str]:
    """Grad-CAM grids (Figure 7): one of every run when their validation images are the
    same, else one per set of runs that share them. Returns the figures and a note for
    the page ("" when there is one grid)."""
    plt = _plt()
    groups: dict[str, list[CamColumn]] = {}
    for run in runs:
        column = gradcam_column(run, count)
        groups.setdefault(column.image_key(), []).append(column)
    figures = []
    for i, group in enumerate(groups.values(), start=1):
        names = ", ".join(c.run for c in group)
        figure = PageFigure("gradcam.png" if len(groups) == 1 else f"gradcam_{i}.png",
                            f"Grad-CAM: {names}" if len(groups) > 1 else "Grad-CAM",
                            f"Grad-CAM of the true class on the last conv layer for {len(group[0].labels)} validation "
                            f"images, one per row: the image, then a column per run ({names}).")
        fig = draw_gradcam(group)
        fig.savefig(out / figure.file, dpi=100)
        plt.close(fig)
        figures.append(figure)
    if len(groups) == 1:
        return figures, ""
    sets = "; ".join(", ".join(c.run for c in group) for group in groups.values())
    note = (f"The runs' validation images differ (another dataset, seed, size or split), so each set of runs that "
            f"share them has a grid of its own and a row shows one image: {sets}.")
    print(f"note: {note}", file=sys.stderr)
    return figures, note


@torch.no_grad()
def tsne_figure(run: Path, out: Path, count: int, name: str) -> PageFigure:
    """t-SNE of the pooled features of ``count`` validation images, coloured by class (Figure 8)."""
    from sklearn.manifold import TSNE
    from tqdm import tqdm

    plt = _plt()
    _, model, val = _load(run)
    idx = np.linspace(0, len(val.labels) - 1, min(count, len(val.labels))).astype(int)
    feats = []
    for start in tqdm(range(0, len(idx), 256), desc=f"features {run.name}", file=sys.stderr):
        batch = torch.from_numpy(val.images[idx[start:start + 256]]).permute(0, 3, 1, 2)
        feats.append(model(batch)["features"].float())
    feats = torch.cat(feats).numpy()
    points = TSNE(n_components=2, perplexity=min(30.0, len(idx) - 1.0), init="pca", random_state=0).fit_transform(feats)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(points[:, 0], points[:, 1], c=val.labels[idx], cmap="tab10" if len(val.classes) <= 10 else "tab20",
               s=6)
    ax.set_title(f"t-SNE of pooled features: {run.name}", fontsize=8), ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return PageFigure(name, f"t-SNE: {run.name}", f"t-SNE of the pooled backbone features of {len(idx)} validation "
                      f"images of {run.name}, a colour per class.")


def runs_table(runs: list[Path], logs: dict[str, list[dict]], papers: dict[str, float | None]) -> str:
    """An HTML table of the runs side by side: epochs, final and best accuracy, the
    paper's number where a ladder table names the run, shot groups and robust accuracy."""
    def num(v) -> str:
        return "" if v is None else f"{v:.2f}"

    cols = ["run", "epochs", "final top-1 %", "best top-1 % (epoch)", "paper %", "many / medium / few-shot %",
            "robust %"]
    body = []
    for run in runs:
        rows = logs[run.name]
        last = rows[-1] if rows else {}
        best = f"{num(last.get('best_val_acc1'))} ({last.get('best_epoch', -1) + 1})" if last else ""
        shots = " / ".join(num(last.get(f"val_{g}_shot")) for g in ("many", "medium", "few")) \
            if "val_many_shot" in last else ""
        robust = " ".join(f"{k[4:-5]} {v:.2f}" for k, v in last.items() if k.startswith("val_pgd") and k.endswith("_acc1"))
        cells = [html.escape(run.name), str(len(rows)), num(last.get("val_acc1")), best, num(papers.get(run.name)),
                 shots, robust]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
    return f"<table>{head}{''.join(body)}</table>"


def table_papers(path: str | None) -> dict[str, float | None]:
    """Row name -> the paper's first number, from a ladder table file (``--table``)."""
    if not path:
        return {}
    from gssl_fast.ladder import load_table

    return {row.name: row.paper[0] for row in load_table(path).rows}


def _figure_html(figure: PageFigure) -> str:
    caption = html.escape(figure.caption)
    return (f'<figure><h3>{html.escape(figure.heading)}</h3><img src="{html.escape(figure.file)}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _section(heading: str, figures: list[PageFigure], note: str = "") -> str:
    note = f"<p>{html.escape(note)}</p>" if note else ""
    return f"<h2>{heading}</h2>{note}\n" + "\n".join(map(_figure_html, figures)) if figures else ""


def write_report(runs: list[Path], out: Path, *, images: int = 8, tsne: int = 500, table: str | None = None) -> Path:
    """Writes the figures and ``index.html`` into ``out``; returns the page."""
    for run in runs:
        if not (run / "metrics.jsonl").is_file():
            raise UserError(f"{run} is not a run folder (no metrics.jsonl); give the folder a training run wrote")
    out.mkdir(parents=True, exist_ok=True)
    logs = {run.name: MetricsLog(run / "metrics.jsonl").read() for run in runs}
    curves = curve_figures(logs, out)
    cams, note = gradcam_figures(runs, out, images)
    points = [tsne_figure(run, out, tsne, f"tsne_{i}.png") for i, run in enumerate(runs)]
    sections = "\n".join([_section("Training curves", curves), _section("Grad-CAM (Figure 7)", cams, note),
                          _section("t-SNE of the validation features (Figure 8)", points)])
    page = out / "index.html"
    page.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>gssl_fast report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;
padding:4px 8px}}figure{{display:inline-block;vertical-align:top;margin:8px}}figure h3{{margin:0 0 4px;font-size:1em}}
figcaption{{max-width:640px;font-size:.9em}}img{{max-width:640px}}</style></head><body>
<h1>gssl_fast report</h1><p>Runs: {html.escape(", ".join(run.name for run in runs))}.</p>
<h2>The runs side by side</h2>{runs_table(runs, logs, table_papers(table))}
{sections}
</body></html>
""")
    return page


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gssl_fast.report", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", default=None, help="output folder (default: <first run>/report)")
    p.add_argument("--images", type=int, default=8, help="validation images shown with Grad-CAM")
    p.add_argument("--tsne", type=int, default=500, help="validation images in the t-SNE plot")
    p.add_argument("--table", default=None, help="a ladder table file: the paper's number of each run named as a row")
    args = p.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    try:
        page = write_report(runs, Path(args.out) if args.out else runs[0] / "report", images=args.images,
                            tsne=args.tsne, table=args.table)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
