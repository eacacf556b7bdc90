"""A report of what training did: PNG figures and one ``index.html`` for one or more runs.

    python -m gssl_fast.report RUN_DIR [RUN_DIR ...] [--out DIR] [--images 8] [--tsne 500] [--table FILE]

- curves: training loss and validation accuracy per epoch; the gate value of each task per
  epoch (the long paper's Figure 6); each pretext head's accuracy; robust accuracy when the
  runs have it; per-class accuracy of the last epoch, and the shot groups of long-tailed runs;
- Grad-CAM (the ``grad-cam`` package) on the last conv layer of each run's backbone, for a
  fixed set of validation images, one column per run (Figure 7);
- t-SNE (scikit-learn) of the pooled validation features, coloured by class (Figure 8);
- a side-by-side table of the runs, with many / medium / few-shot accuracy of long-tailed
  runs and, with ``--table`` (a ladder table file), the paper's number of each run whose
  folder is named after a row (as the ladder names them).
Works offline on any run folder; the default output folder is ``<first run>/report``.
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

import numpy as np
import torch

from gssl_fast.errors import UserError
from gssl_fast.metrics import MetricsLog


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict], key: str, sub: str | None = None) -> tuple[list[int], list[float]]:
    pairs = [(r["epoch"] + 1, r[key][sub] if sub else r[key]) for r in rows
             if key in r and (sub is None or sub in r[key]) and (sub or isinstance(r[key], (int, float)))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def curve_figures(logs: dict[str, list[dict]], out: Path) -> list[str]:
    """PNG files of the per-epoch curves; returns their names."""
    plt = _plt()
    names = []

    def panel(name: str, title: str, lines: list[tuple[str, str, str | None]]):
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
            fig.savefig(out / name, dpi=100)
            names.append(name)
        plt.close(fig)

    runs = list(logs)
    tasks = sorted({t for rows in logs.values() for r in rows for t in r.get("gate", {})})
    panel("loss.png", "training loss", [(run, "train_loss", None) for run in runs])
    panel("accuracy.png", "validation top-1 %", [(run, "val_acc1", None) for run in runs])
    panel("gates.png", "gate value per task (Figure 6)", [(f"{run} | {t}", "gate", t) for run in runs for t in tasks])
    panel("pretext.png", "pretext head accuracy %", [(f"{run} | {t}", "pretext_acc", t) for run in runs for t in tasks])
    robust = sorted({k for rows in logs.values() for r in rows for k in r if k.startswith("val_pgd")
                     and k.endswith("_acc1")})
    panel("robust.png", "robust top-1 %", [(f"{run} | {k[4:-5]}", k, None) for run in runs for k in robust])
    names += per_class_figure(logs, out, plt)
    return names


def per_class_figure(logs: dict[str, list[dict]], out: Path, plt) -> list[str]:
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
    return ["per_class.png"]


def _load(run: Path):
    from gssl_fast.inference import load_for_evaluation

    recipe, _, model, val = load_for_evaluation(run)
    return recipe, model, val


def gradcam_figure(runs: list[Path], out: Path, count: int) -> str:
    """Grad-CAM of the true class on the last conv layer, ``count`` validation images
    (the same for every run, spread over the split), one column per run (Figure 7)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from gssl_fast.inference import Classifier
    from gssl_fast.models import last_conv_name

    plt = _plt()
    fig, axes = plt.subplots(count, len(runs) + 1, figsize=(1.6 * (len(runs) + 1), 1.6 * count), squeeze=False)
    for col, run in enumerate(runs):
        _, model, val = _load(run)
        idx = np.linspace(0, len(val.labels) - 1, count).astype(int)
        pixels = torch.from_numpy(val.images[idx]).permute(0, 3, 1, 2).float() / 255.0
        layer = dict(model.backbone.named_modules())[last_conv_name(model.backbone)]
        with GradCAM(model=Classifier(model), target_layers=[layer]) as cam:
            maps = cam(input_tensor=pixels, targets=[ClassifierOutputTarget(int(y)) for y in val.labels[idx]])
        for row in range(count):
            image = val.images[idx[row]] / 255.0
            if col == 0:
                axes[row, 0].imshow(image)
                axes[row, 0].set_title(val.classes[val.labels[idx[row]]][:12], fontsize=6)
            axes[row, col + 1].imshow(image)
            axes[row, col + 1].imshow(maps[row], cmap="jet", alpha=0.45)
            if row == 0:
                axes[0, col + 1].set_title(run.name[:14], fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "gradcam.png", dpi=100)
    plt.close(fig)
    return "gradcam.png"


@torch.no_grad()
def tsne_figure(run: Path, out: Path, count: int, name: str) -> str:
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
    return name


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


def write_report(runs: list[Path], out: Path, *, images: int = 8, tsne: int = 500, table: str | None = None) -> Path:
    """Writes the figures and ``index.html`` into ``out``; returns the page."""
    for run in runs:
        if not (run / "metrics.jsonl").is_file():
            raise UserError(f"{run} is not a run folder (no metrics.jsonl); give the folder a training run wrote")
    out.mkdir(parents=True, exist_ok=True)
    logs = {run.name: MetricsLog(run / "metrics.jsonl").read() for run in runs}
    figures = curve_figures(logs, out)
    figures.append(gradcam_figure(runs, out, images))
    figures += [tsne_figure(run, out, tsne, f"tsne_{i}.png") for i, run in enumerate(runs)]
    imgs = "\n".join(f'<figure><img src="{name}" alt="{name}"><figcaption>{name}</figcaption></figure>'
                     for name in figures)
    page = out / "index.html"
    page.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>gssl_fast report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;
padding:4px 8px}}figure{{display:inline-block;margin:8px}}img{{max-width:640px}}</style></head><body>
<h1>gssl_fast report</h1>{runs_table(runs, logs, table_papers(table))}
{imgs}
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
