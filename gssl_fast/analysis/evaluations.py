"""Calibration and out-of-distribution evaluations of a finished run, written beside it.

    uncertainty_run(run, calibration=True, sources=["cifar100"])   the figures, one dict
    <run>/temperature.json   the fitted temperature (``load_model(..., calibrated=True)``)
    <run>/calibration.json   ECE, NLL, Brier before / after, and the reliability diagram's bins
    <run>/ood.json           per source: each score's AUROC, AUPR, FPR95 and histograms

Every pass runs in one process on the CPU or the first GPU with the plain torch loader;
the pretext transforms are applied batched on that device, as in training.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from pipelines.errors import UserError

CALIBRATION = "calibration.json"
OOD = "ood.json"
HISTOGRAM_BINS = 30


def uncertainty_run(run, *, calibration: bool = False, fraction: float = 0.1, sources=(), batch_size: int = 0,
                    device: str | None = None, loaded=None, accuracy: bool = False) -> dict[str, float]:
    """The calibration figures (``ece``, ``nll``, ``brier``, each also ``_calibrated``, and
    ``temperature``) and, per OOD source, ``ood_[<source>_]<score>_{auroc,aupr,fpr95}``
    (the source's name only when there are several) of ``run`` (a run folder or
    checkpoint); writes the JSON files of the module docstring into the run folder.
    ``loaded``: what ``load_for_evaluation(run)`` gave, when the caller has it already;
    ``accuracy``: ``acc1`` and ``acc5`` of the validation pass too (as
    ``gssl_fast.model.metrics.evaluate`` gives them)."""
    from gssl_fast.analysis.inference import load_for_evaluation
    from gssl_fast.run.stages import trained_checkpoint

    folder = trained_checkpoint(run).run_dir
    recipe, _, model, val = loaded or load_for_evaluation(run)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    passes = Passes(model.to(device), recipe, batch_size or recipe.train.eval_batch_size, device)
    inside = passes.run(val, "val")
    out = {}
    if accuracy:
        from gssl_fast.model.metrics import accuracy_report, topk_predictions

        k = min(5, inside["logits"].shape[1])
        report = accuracy_report(topk_predictions(inside["logits"], k).numpy(), inside["labels"].numpy(),
                                 inside["logits"].shape[1])
        out.update(acc1=report["val_acc1"], acc5=report["val_acc5"])
    if calibration:
        out.update(calibrate(passes, recipe, inside, fraction, folder))
    if sources:
        out.update(ood(passes, recipe, inside, sources, folder))
    return out


class Passes:
    """One model's passes over datasets: ``[N, K]`` logits, ``[N]`` labels and, for a
    model with pretext heads, the ``[N]`` pretext score, on the CPU."""

    def __init__(self, model, recipe, batch_size: int, device: torch.device):
        self.model, self.recipe, self.batch_size, self.device = model, recipe, batch_size, device
        self.heads = bool(getattr(model, "tasks", ()))

    @torch.no_grad()
    def run(self, split, desc: str, subset=None) -> dict[str, torch.Tensor]:
        """The passes over ``split`` (``gssl_fast.analysis.split.EvalSplit``), or over
        ``subset`` (``[M]`` positions) of it."""
        from gssl_fast.analysis.uncertainty import pretext_score
        from gssl_fast.run.progress import progressed

        loader = split.loader(self.batch_size, self.device, subset=subset)
        logits, labels, pretext = [], [], []
        for batch in progressed(loader, desc):
            logits.append(self.model(batch["images"])["logits"].float().cpu())
            labels.append(batch["labels"].cpu())
            if self.heads:
                pretext.append(pretext_score(self.model, batch["images"], self.recipe.pretext.flip_axis).cpu())
        return {"logits": torch.cat(logits), "labels": torch.cat(labels),
                "pretext": torch.cat(pretext) if pretext else None}


def calibrate(passes: Passes, recipe, inside: dict, fraction: float, folder: Path) -> dict[str, float]:
    """Temperature fitted on the training images the run held out of training
    (``data.calibration_fraction``), or, for a run that trained on every one, on a
    seeded ``fraction`` of each class of them (said, since the model has seen those);
    never on the validation split. The figures before and after it; writes
    temperature.json and calibration.json."""
    from gssl_fast.analysis.inference import TEMPERATURE
    from gssl_fast.analysis.uncertainty import calibration, fit_temperature
    from pipelines.atomic import write_text_atomic

    fit, fitted_on = calibration_pass(passes, recipe, fraction)
    t = fit_temperature(fit["logits"], fit["labels"])
    before, after = calibration(inside["logits"], inside["labels"]), calibration(inside["logits"], inside["labels"], t)
    write_text_atomic(folder / TEMPERATURE, json.dumps({"temperature": t, "fitted_on": fitted_on}))
    write_text_atomic(folder / CALIBRATION, json.dumps({"temperature": t, "fitted_on": fitted_on, "before": before,
                                                        "after": after}))
    out = {k: before[k] for k in ("ece", "nll", "brier")}
    out.update({f"{k}_calibrated": after[k] for k in ("ece", "nll", "brier")})
    return {**out, "temperature": t}


def calibration_pass(passes: Passes, recipe, fraction: float) -> tuple[dict, str]:
    """The passes over the images the temperature is fitted on, and what they are."""
    from gssl_fast.analysis.split import eval_split
    from pipelines.datasets import CALIBRATION

    data = recipe.data
    if data.calibration_fraction:
        held = eval_split(data, CALIBRATION)
        return passes.run(held, "calibration split"), (f"{len(held)} training images held out of training "
                                                         f"(data.calibration_fraction = {data.calibration_fraction:g})")
    from pipelines.sampling import held_out_positions

    if not 0 < fraction < 1:
        raise UserError(f"--calibration-fraction must be in (0, 1), got {fraction}")
    train = eval_split(data, "train")
    held = held_out_positions(train.labels, fraction, recipe.train.seed)
    print(f"calibration: the temperature is fitted on {len(held)} training images the model trained on "
          "(data.calibration_fraction = 0); hold a share out of training with data.calibration_fraction "
          "for a fit on images it has not seen", file=sys.stderr, flush=True)
    return passes.run(train, "calibration split", subset=held), (
        f"{len(held)} training images the model trained on ({fraction:g} of each class, seed {recipe.train.seed})")


def ood(passes: Passes, recipe, inside: dict, sources, folder: Path) -> dict[str, float]:
    """Each source's OOD figures against the validation split ``inside``; writes ood.json."""
    from gssl_fast.analysis.uncertainty import PRETEXT_SCORES, ood_metrics, ood_scores
    from pipelines.atomic import write_text_atomic

    if not passes.heads:
        print(f"ood: the model has no pretext heads; scores {', '.join(PRETEXT_SCORES)} need them "
              "(pretext.tasks), so only msp and energy are given", flush=True)
    mine = {k: v.numpy() for k, v in ood_scores(inside["logits"], inside["pretext"]).items()}
    out, written = {}, {}
    for source in sources:
        other = passes.run(ood_dataset(source, recipe.data), f"ood {source}")
        theirs = {k: v.numpy() for k, v in ood_scores(other["logits"], other["pretext"]).items()}
        prefix = f"ood_{source_name(source)}_" if len(sources) > 1 else "ood_"
        written[source] = {}
        for score in mine:
            figures = ood_metrics(mine[score], theirs[score])
            out.update({f"{prefix}{score}_{k}": v for k, v in figures.items()})
            written[source][score] = {**figures, "histogram": histogram(mine[score], theirs[score])}
    write_text_atomic(folder / OOD, json.dumps(written))
    return out


def histogram(inside: np.ndarray, outside: np.ndarray) -> dict:
    """Both score distributions over shared bins: ``{edges, inside, outside}`` (counts)."""
    edges = np.histogram_bin_edges(np.r_[inside, outside], bins=HISTOGRAM_BINS)
    return {"edges": edges.tolist(), "inside": np.histogram(inside, edges)[0].tolist(),
            "outside": np.histogram(outside, edges)[0].tolist()}


def source_name(source: str) -> str:
    """A source's short name for metric keys: the dataset name, or the folder's name."""
    return Path(source.split(":", 1)[0]).name.replace("-", "_") or "source"


def ood_dataset(source: str, data):
    """The validation images of ``source`` at the run's ``data.image_size``, read as the
    run read its own (``gssl_fast.analysis.split.EvalSplit``; streamed with the run's
    validation crop when the run streamed and ``source`` is a folder dataset): a dataset
    name of ``pipelines.datasets.DATASETS`` with an optional ``:ROOT`` (default: where
    ``python -m gssl_fast.fetch`` puts it), or an image folder (ImageFolder tree)."""
    import dataclasses

    from gssl_fast.analysis.split import eval_split
    from pipelines.datasets import DATASETS, FOLDER_DATASETS
    from pipelines.datasets.fetch import ARCHIVES, DEFAULT_ROOT
    from pipelines.stream import streamed

    name, _, root = source.partition(":")
    if name not in DATASETS:
        if not Path(source).is_dir():
            raise UserError(f"--ood {source}: neither a dataset ({', '.join(DATASETS)}) nor an image folder")
        name, root = "imagefolder", source
    elif not root and name in ARCHIVES:
        root = str(Path(DEFAULT_ROOT) / ARCHIVES[name].folder)
    stream = streamed(data) and name in FOLDER_DATASETS
    cfg = dataclasses.replace(data, name=name, root=root, longtail="none", val_fraction=0.0, calibration_fraction=0.0,
                              val_root="", beton="", stream=stream, crop=data.crop if stream else "pad",
                              download=False, mirror="")
    split = "val" if name != "imagefolder" or (Path(root) / "val").is_dir() else "train"
    return eval_split(cfg, split)


# ------------------------------------------------------------------ what the report shows of them


def uncertainty_figures(runs: list[Path], out: Path) -> tuple[list, str]:
    """The report's part of the runs' evaluations: a reliability diagram per run with
    calibration.json, score histograms per run and source with ood.json (PNGs into
    ``out``), and the OOD table as HTML ("" without any)."""
    from gssl_fast.analysis.figures import PageFigure

    figures, rows = [], []
    for i, run in enumerate(runs):
        if (run / CALIBRATION).is_file():
            saved = json.loads((run / CALIBRATION).read_text())
            name = f"reliability_{i}.png"
            reliability_diagram(saved, out / name, run.name)
            figures.append(PageFigure(name, f"Reliability: {run.name}", (
                f"Accuracy against confidence in 15 bins of the validation images, before and after temperature "
                f"scaling (T = {saved['temperature']:.3f}); ECE {saved['before']['ece']:.2f} -> "
                f"{saved['after']['ece']:.2f} %. On the diagonal a model is as sure as it is right.")))
        if (run / OOD).is_file():
            for j, (source, scores) in enumerate(json.loads((run / OOD).read_text()).items()):
                name = f"ood_{i}_{j}.png"
                score_histograms(scores, out / name, f"{run.name} vs {source}")
                figures.append(PageFigure(name, f"OOD scores: {run.name} vs {source}", (
                    "Histograms of each score (higher: more unlike the training data) on the validation images and "
                    f"on {source}'s; the less they overlap, the better the score tells them apart.")))
                rows += [(run.name, source, score, v) for score, v in scores.items()]
    return figures, ood_table(rows)


def reliability_diagram(saved: dict, path: Path, title: str) -> None:
    from gssl_fast.analysis.figures import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8), sharey=True)
    for ax, (when, part) in zip(axes, (("before", saved["before"]), ("after", saved["after"]))):
        bins = part["bins"]
        centres = [(lo + hi) / 2 for lo, hi in zip(bins["lower"], bins["upper"])]
        shown = [a if n else 0 for a, n in zip(bins["accuracy"], bins["count"])]
        ax.bar(centres, shown, width=1 / len(centres), edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "r--", label="perfectly calibrated")
        ax.set_title(f"{when} (ECE {part['ece']:.2f} %)")
        ax.set_xlabel("confidence")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def score_histograms(scores: dict, path: Path, title: str) -> None:
    from gssl_fast.analysis.figures import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, len(scores), figsize=(3.2 * len(scores), 3))
    for ax, (score, figures) in zip(np.atleast_1d(axes), scores.items()):
        h = figures["histogram"]
        edges = np.asarray(h["edges"])
        for counts, label in ((h["inside"], "validation"), (h["outside"], "OOD")):
            ax.stairs(np.asarray(counts) / max(sum(counts), 1), edges, fill=True, alpha=0.5, label=label)
        ax.set_title(f"{score} (AUROC {figures['auroc']:.1f})", fontsize=9)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def ood_table(rows: list[tuple]) -> str:
    """``rows`` of ``(run, source, score, figures)`` as an HTML table ("" without rows)."""
    import html

    if not rows:
        return ""
    head = "<tr><th>run</th><th>OOD source</th><th>score</th><th>AUROC</th><th>AUPR</th><th>FPR at 95 % TPR</th></tr>"
    body = "".join(f"<tr><td>{html.escape(run)}</td><td>{html.escape(source)}</td><td>{score}</td>"
                   f"<td>{f['auroc']:.2f}</td><td>{f['aupr']:.2f}</td><td>{f['fpr95']:.2f}</td></tr>"
                   for run, source, score, f in rows)
    return f"<table>{head}{body}</table>"
