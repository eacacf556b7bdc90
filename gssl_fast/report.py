"""A report of what training did: PNG figures and one ``index.html`` for one or more runs.

    python -m gssl_fast.report RUN_DIR [RUN_DIR ...] [--out DIR] [--images 8] [--tsne 500] [--table FILE]

- curves: a figure per group of the metrics a run's method declares (``Method.metrics``,
  found from the method its config.toml names): training loss and scalars, validation
  accuracy, and each group of the method's own (the gate value of each G-SSL task, the
  long paper's Figure 6, say) per epoch; bars of per-class accuracy at the last epoch;
- Grad-CAM (the ``grad-cam`` package) on the last conv layer of each run's backbone, for a
  fixed set of validation images, one column per run (Figure 7); runs whose validation
  images differ (another dataset, seed or size) get a grid each, so that a row is one image;
- t-SNE (scikit-learn) of the pooled validation features, coloured by class (Figure 8);
- where ``python -m gssl_fast.evaluate RUN --calibration --ood SOURCE`` wrote its files into
  a run folder: its reliability diagram, the OOD scores' histograms and an OOD table;
- a side-by-side table of the runs: final and best accuracy, a column per declared group
  (shot groups of long-tailed runs, say) and, with ``--table`` (a ladder table file), the
  paper's number of each run whose folder is named after a row (as the ladder names them).
A run folder without a readable config.toml, or whose method is not registered in this
process, is shown with the metrics every method logs.
Each figure has a heading and a one-line caption on the page. Works offline on any run
folder; the default output folder is ``<first run>/report``.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path

import numpy as np

from pipelines.errors import UserError
from gssl_fast.analysis.evaluations import uncertainty_figures
from gssl_fast.analysis.figures import PageFigure, _plt, gradcam_column, gradcam_figures, tsne_figure
from gssl_fast.run.log import MetricsLog
from gssl_fast.run.progress import is_number, metric_items


# Headings of the groups every method has (``Metric.group``); any other group is its own heading.
HEADINGS = {"train": "Training", "val": "Validation"}


def declared_metrics(run: Path) -> dict:
    """How ``run``'s metrics are shown, ``{field: Metric}``: the declarations
    (``Method.metrics``) of the method its config.toml names; the fields every method
    logs when it has no readable config.toml or its method is not registered here (one
    registered by a module this process did not import)."""
    from gssl_fast.config import tomllib
    from gssl_fast.methods import DEFAULT_METHOD, method_class
    from gssl_fast.methods.base import GENERIC_METRICS

    try:
        recipe = tomllib.loads((run / "config.toml").read_text(encoding="utf-8"))
        return dict(method_class(recipe.get("method", {}).get("name", DEFAULT_METHOD)).metrics())
    except (OSError, ValueError, TypeError, UserError, ImportError, AttributeError) as e:
        print(f"note: {run}: shown with the metrics every method logs ({e})", file=sys.stderr)
        return dict(GENERIC_METRICS)


def _heading(group: str) -> str:
    return HEADINGS.get(group) or (group if group != group.lower() else group[:1].upper() + group[1:])


def _file_name(group: str, taken: set) -> str:
    stem = re.sub(r"[^a-z0-9]+", "_", group.lower()).strip("_") or "metrics"
    name, i = f"{stem}.png", 1
    while name in taken:
        i += 1
        name = f"{stem}_{i}.png"
    taken.add(name)
    return name


def _groups(declared: dict[str, dict]) -> dict[str, list[tuple[str, str, object]]]:
    """``{group: [(run, field, Metric), ...]}`` of the runs' declarations (groups in the
    order first declared; the hidden group ``""`` left out)."""
    groups: dict[str, list] = {}
    for run, metrics in declared.items():
        for field, metric in metrics.items():
            if metric.group:
                groups.setdefault(metric.group, []).append((run, field, metric))
    return groups


def _stages(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """``[(stage, its rows)]``: one ``("", rows)`` for a run trained in one go."""
    names = list(dict.fromkeys(r.get("stage", "") for r in rows))
    return [(name, [r for r in rows if r.get("stage", "") == name]) for name in names]


def _series(rows: list[dict], key: str, sub: str | None = None) -> tuple[list[int], list[float]]:
    values = [(r["epoch"] + 1, r[key][sub] if sub is not None else r[key]) for r in rows
              if key in r and (sub is None or isinstance(r[key], dict) and sub in r[key])]
    pairs = [(x, y) for x, y in values if is_number(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _about(members) -> str:
    return " ".join(dict.fromkeys(m.about for _, _, m in members if m.about))


def curve_figures(logs: dict[str, list[dict]], out: Path, declared: dict[str, dict] | None = None) -> list[PageFigure]:
    """PNG files of the per-epoch curves, a figure per group of declared metrics
    (``Metric.group``; an axes per unit) that the runs have data for, a line per run
    (and stage, for a staged run) and metric, or key of a nested field; then the bars of
    list-valued metrics (per-class accuracy). ``declared``: each run's
    ``{field: Metric}`` (default: the metrics every method logs)."""
    from gssl_fast.methods.base import GENERIC_METRICS

    plt = _plt()
    declared = declared or {run: GENERIC_METRICS for run in logs}
    figures, taken = [], set()
    for group, members in _groups(declared).items():
        lines = []  # (unit, legend label, x, y)
        drawn = [(run, field, m) for run, field, m in members if m.curve]
        several = len({field for _, field, _ in drawn}) > 1
        for run, field, metric in drawn:
            for stage, rows in _stages(logs[run]):
                who = f"{run} {stage}".strip()
                keys = list(dict.fromkeys(k for r in rows if isinstance(r.get(field), dict) for k in r[field]))
                for sub in keys or [None]:
                    x, y = _series(rows, field, sub)
                    name = sub if sub is not None else metric.label if several else ""
                    if x:
                        lines.append((metric.unit, f"{who} | {name}" if name else who, x, y))
        units = list(dict.fromkeys(unit for unit, *_ in lines))
        if not units:
            continue
        figure = PageFigure(_file_name(group, taken), _heading(group),
                            _about(drawn) or f"{_heading(group)} per epoch, a line per run and metric.")
        fig, axes = plt.subplots(1, len(units), figsize=(6 * len(units), 3.6), squeeze=False)
        for ax, unit in zip(axes[0], units):
            for _, label, x, y in (line for line in lines if line[0] == unit):
                ax.plot(x, y, marker="o" if len(x) < 30 else None, label=label)
            ax.set_title(f"{_heading(group)}{f' {unit}' if unit else ''}"), ax.set_xlabel("epoch")
            ax.legend(fontsize=7), ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / figure.file, dpi=100)
        plt.close(fig)
        figures.append(figure)
    return figures + bar_figures(logs, out, declared, taken)


def bar_figures(logs: dict[str, list[dict]], out: Path, declared: dict[str, dict], taken: set) -> list[PageFigure]:
    """Bars of each list-valued metric at the last epoch that logged it (per-class
    accuracy: a bar per class), a colour per run."""
    plt = _plt()
    figures = []
    for group, members in _groups(declared).items():
        last, several = {}, len({field for _, field, _ in members}) > 1
        for run, field, metric in members:
            rows = [r for r in logs[run] if isinstance(r.get(field), list)]
            if rows:
                last[f"{run} | {metric.label}" if several else run] = (metric, rows[-1][field])
        if not last:
            continue
        fig, ax = plt.subplots(figsize=(7, 3.6))
        width = 0.8 / len(last)
        for i, (label, (metric, values)) in enumerate(last.items()):
            bars = [np.nan if v is None else v for v in values]
            ax.bar(np.arange(len(bars)) + i * width, bars, width, label=label)
        unit = next(iter(last.values()))[0].unit
        ax.set_title(f"{_heading(group)}{f' {unit}' if unit else ''}, last epoch"), ax.legend(fontsize=7)
        figure = PageFigure(_file_name(group, taken), _heading(group),
                            _about(members) or f"{_heading(group)} at the last epoch, a bar colour per run.")
        fig.tight_layout()
        fig.savefig(out / figure.file, dpi=100)
        plt.close(fig)
        figures.append(figure)
    return figures


def runs_table(runs: list[Path], logs: dict[str, list[dict]], papers: dict[str, float | None],
               declared: dict[str, dict] | None = None) -> str:
    """An HTML table of the runs side by side: epochs, final and best accuracy, the
    paper's number where a ladder table names the run, then a column per group of the
    metrics the runs' methods declare (``declared``: each run's ``{field: Metric}``;
    default: the metrics every method logs), each metric's last value with its label;
    training scalars (group ``train``) and the validation group, which the first
    columns sum up, left out."""
    from gssl_fast.methods.base import GENERIC_METRICS

    declared = declared or {run.name: GENERIC_METRICS for run in runs}

    def num(v) -> str:
        return "" if v is None else f"{v:.2f}"

    def last(rows: list[dict], field: str):
        return next((r[field] for r in reversed(rows) if r.get(field) is not None), None)

    groups = {group: members for group, members in _groups(declared).items() if group not in ("train", "val")}
    def cell(run: str, members) -> str:
        return " ".join(item for r, field, metric in members if r == run
                        for item in metric_items(metric, field, last(logs[run], field)))

    cells_of = {run.name: {group: cell(run.name, members) for group, members in groups.items()} for run in runs}
    shown = [group for group in groups if any(cells[group] for cells in cells_of.values())]
    cols = ["run", "epochs", "final top-1 %", "best top-1 % (epoch)", "paper %", *shown]
    body = []
    for run in runs:
        rows = logs[run.name]
        final = rows[-1] if rows else {}
        best = f"{num(final.get('best_val_acc1'))} ({final.get('best_epoch', -1) + 1})" if final else ""
        cells = [html.escape(run.name), str(len(rows)), num(final.get("val_acc1")), best, num(papers.get(run.name)),
                 *(html.escape(cells_of[run.name][group]) for group in shown)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
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
    from gssl_fast.analysis.inference import load_for_evaluation

    for run in runs:
        if not (run / "metrics.jsonl").is_file():
            raise UserError(f"{run} is not a run folder (no metrics.jsonl); give the folder a training run wrote")
    out.mkdir(parents=True, exist_ok=True)
    logs = {run.name: MetricsLog(run / "metrics.jsonl").read() for run in runs}
    declared = {run.name: declared_metrics(run) for run in runs}
    curves = curve_figures(logs, out, declared)
    columns, points = [], []
    for i, run in enumerate(runs):  # each run's model and validation images loaded once, for both figures
        loaded = load_for_evaluation(run)
        columns.append(gradcam_column(run, images, loaded))
        points.append(tsne_figure(run, out, tsne, f"tsne_{i}.png", loaded))
    cams, note = gradcam_figures(columns, out)
    trust, ood_rows = uncertainty_figures(runs, out)
    sections = "\n".join([_section("Training curves", curves), _section("Grad-CAM (Figure 7)", cams, note),
                          _section("t-SNE of the validation features (Figure 8)", points),
                          _section("Calibration and out-of-distribution scores", trust,
                                   "From python -m gssl_fast.evaluate RUN --calibration --ood SOURCE.")
                          + ood_rows])
    page = out / "index.html"
    page.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>gssl_fast report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;
padding:4px 8px}}figure{{display:inline-block;vertical-align:top;margin:8px}}figure h3{{margin:0 0 4px;font-size:1em}}
figcaption{{max-width:640px;font-size:.9em}}img{{max-width:640px}}</style></head><body>
<h1>gssl_fast report</h1><p>Runs: {html.escape(", ".join(run.name for run in runs))}.</p>
<h2>The runs side by side</h2>{runs_table(runs, logs, table_papers(table), declared)}
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
