"""Progress display for the main process: a tqdm bar on a terminal, plain lines (about
ten per epoch) in logs and CI, where carriage returns make a mess; the epoch line and
the summary that ends a run."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def terminal_stream():
    """The stream a bar is drawn on: stderr, or stdout when only stdout is a terminal
    (``accelerate launch`` with one process pipes its child's stderr through itself);
    None when neither is a terminal."""
    for stream in (sys.stderr, sys.stdout):
        if stream.isatty():
            return stream
    return None


class Progress:
    """``update(n_images, stats)`` after each step; ``close()`` at the end of the epoch.

    ``stats`` is a callable returning ``{name: float}``, called only when a value is
    shown, so that a CUDA run does not wait for the GPU at every step.
    """

    def __init__(self, total_steps: int, *, desc: str, enabled: bool = True, stream=None):
        self.total, self.desc, self.enabled = total_steps, desc, enabled
        terminal = terminal_stream() if stream is None else (stream if stream.isatty() else None)
        self.stream = terminal or stream or sys.stderr
        self.steps = self.images = 0
        self.start = time.perf_counter()
        self.bar = None
        self.next_line = max(total_steps // 10, 1)
        if enabled and terminal is not None:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, desc=desc, file=self.stream, dynamic_ncols=True, leave=True)

    def rate(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def _text(self, stats) -> dict[str, str]:
        text = {k: f"{v:.4g}" for k, v in (stats() if stats else {}).items()}
        text["img/s"] = f"{self.rate():.0f}"
        return text

    def update(self, n_images: int, stats=None) -> None:
        self.steps += 1
        self.images += n_images
        if not self.enabled:
            return
        last = self.steps == self.total
        if self.bar is not None:
            if self.steps % 10 == 0 or last:
                self.bar.set_postfix(self._text(stats), refresh=False)
            self.bar.update(1)
        elif self.steps % self.next_line == 0 or last:
            fields = " ".join(f"{k} {v}" for k, v in self._text(stats).items())
            print(f"{self.desc} step {self.steps}/{self.total} {fields}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def describe(recipe, accelerator, threads, train_ds, val_ds, method, plan, first_epoch, stage: str = "") -> None:
    """The first lines of a run (or of one stage): where it runs, on what data, which model and batch."""
    params = sum(p.numel() for p in method.model.parameters())
    streams = ", ".join(f"{name} x{s.batch_size}" for name, s in method.streams().items())
    tasks = recipe.pretext.tasks  # no pretext task: no G-SSL heads or gate to describe
    gssl = f" + heads {list(tasks)}" if tasks else ""
    gate = f", gate {recipe.pretext.gate}/{recipe.pretext.combine}, lambda {recipe.pretext.lam}" if tasks else ""
    print(
        f"gssl_fast: {recipe.name} | method {recipe.method.name}{f' stage {stage}' if stage else ''} | "
        f"device {accelerator.device} "
        f"x{accelerator.num_processes} ({accelerator.distributed_type}), {threads} threads/process, "
        f"precision {accelerator.mixed_precision}\n"
        f"data {recipe.data.name}: {len(train_ds.labels)} train / {len(val_ds.labels)} val images, "
        f"{len(train_ds.classes)} classes, {recipe.data.image_size}px, loader {recipe.train.loader}, streams {streams}\n"
        f"model {recipe.model.backbone}{gssl} ({params / 1e6:.2f}M params){gate}\n"
        f"global batch {recipe.train.batch_size * accelerator.num_processes * recipe.train.grad_accum_steps} "
        f"({recipe.train.batch_size}/process x {accelerator.num_processes} x {recipe.train.grad_accum_steps} "
        f"accumulated), lr {recipe.optim.lr}; "
        f"{plural(plan.steps_per_epoch, 'step')}/epoch, {plural(plan.total_steps, 'step')}, "
        f"epochs {first_epoch + 1}..{plan.epochs}",
        flush=True,
    )


def progressed(loader, desc: str, *, total: int | None = None, enabled: bool = True):
    """The batches of ``loader``, shown as they pass (a bar or about ten lines);
    ``total``: batches expected, when fewer than ``len(loader)`` are taken."""
    progress = Progress(len(loader) if total is None else total, desc=desc, enabled=enabled)
    try:
        for batch in loader:
            try:
                yield batch
            finally:  # also when the consumer stops early: the batch it took was done
                progress.update(len(batch["labels"]))
    finally:
        progress.close()


def number(key: str, value) -> str:
    """One format for every number of a line: accuracies (``*acc*``, percent) with two
    decimals, whole numbers as such, anything else to four significant digits."""
    if isinstance(value, int) or float(value).is_integer() and not key.endswith("acc1"):
        return f"{int(value)}"
    if "acc" in key:
        return f"{value:.2f}"
    return f"{value:.4g}"


# The loop's own fields of a metrics.jsonl row (``gssl_fast.train``): shown in places of
# their own in the epoch line, or not at all; no method declares them.
LOOP_FIELDS = frozenset({"stage", "epoch", "lr", "train_loss", "best_val_acc1", "best_epoch", "train_images",
                         "images_per_s", "seconds", "world_size", "threads", "replicas_in_sync", "nonfinite_steps"})


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def value_text(metric, value, key: str = "") -> str:
    """``value`` in the format and unit ``metric`` (a ``Metric``) declares; its ``fmt``
    empty: the line's one format (:func:`number` of ``key``)."""
    return (f"{value:{metric.fmt}}" if metric.fmt else number(key, value)) + metric.unit


def metric_items(metric, key: str, value) -> list[str]:
    """``["label value"]`` of a number, ``["key value", ...]`` of a nested field's
    numbers; nothing for anything else (a list, None)."""
    if is_number(value):
        return [f"{metric.label} {value_text(metric, value, key)}"]
    if isinstance(value, dict):
        return [f"{k} {value_text(metric, v, k)}" for k, v in value.items() if is_number(v)]
    return []


def summary_line(row: dict, epochs: int, train_keys=(), metrics=None) -> str:
    """One line per epoch, each metric shown as its method declares it (``Metric``):
    the loss and the training scalars (group ``train``), validation accuracy (group
    ``val``), then a ``group label value ...`` segment per other group, in the order
    declared; what no one declared follows under its own name.

    train_keys: the names of the step's scalars (``epoch_row``'s fields); metrics: the
    method's declarations, ``method.metrics()`` (``{field: Metric}``); None: the ones
    every method logs (``GENERIC_METRICS``)."""
    if metrics is None:
        from gssl_fast.methods.base import GENERIC_METRICS

        metrics = GENERIC_METRICS
    groups: dict[str, list[str]] = {"train": [], "val": []}
    for key, metric in metrics.items():
        if key in row and key not in LOOP_FIELDS and metric.group:
            groups.setdefault(metric.group, []).extend(metric_items(metric, key, row[key]))
    known = LOOP_FIELDS | set(metrics)
    groups["train"] += [f"{k} {number(k, row[k])}" for k in train_keys if k not in known and is_number(row.get(k))]
    head = f"epoch {row['epoch'] + 1}/{epochs}: loss {number('loss', row['train_loss'])}"
    trained, val = groups.pop("train"), groups.pop("val")
    head += f" ({' '.join(trained)})" if trained else ""
    head += f" val {' '.join(val)}" if val else ""
    parts = [head] + [f"{group} {' '.join(items)}" for group, items in groups.items() if items]
    # Any other number no one declared (a method's own evaluation), then nested groups, by their names.
    other = [f"{k} {number(k, v)}" for k, v in row.items() if k not in known and k not in train_keys and is_number(v)]
    if other:
        parts.append(" ".join(other))
    for group, values in row.items():
        items = [f"{k} {number(k, v)}" for k, v in values.items() if is_number(v)] \
            if group not in known and isinstance(values, dict) else []
        if items:
            parts.append(f"{group} {' '.join(items)}")
    if row.get("nonfinite_steps"):
        parts.append(f"skipped {row['nonfinite_steps']} steps whose loss was not finite")
    parts.append(f"{row['images_per_s']:.0f} img/s, {row['seconds']:.1f}s")
    return " | ".join(parts)


def scalars_of(row: dict) -> dict[str, float]:
    """The numbers of a metrics.jsonl row for a tracker: nested groups as ``group/key``."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update({f"{key}/{k}": v for k, v in value.items() if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out


def tracker_config(recipe) -> dict:
    """The resolved recipe as flat ``section.key`` hyperparameters (lists as text)."""
    from gssl_fast.config import recipe_to_dict

    return {f"{section}.{key}": value if isinstance(value, (int, float, str, bool)) else str(value)
            for section, table in recipe_to_dict(recipe).items() for key, value in table.items()}


def run_summary(run_dir: Path, rows: list[dict], seconds: float) -> str:
    """The lines that end a run: best and final validation accuracy (of the last stage
    that has one, for a staged method), its epochs, the time this start took and the
    training images per second, then where the run's files are and how to draw its report."""
    scored = [r for r in rows if "val_acc1" in r]
    stage = scored[-1].get("stage", "") if scored else ""
    mine = [r for r in scored if r.get("stage", "") == stage]
    head = f"finished {run_dir}"
    if mine:
        best = max(mine, key=lambda r: r["val_acc1"])
        head += (f"{f' (stage {stage})' if stage else ''}: best val top-1 {best['val_acc1']:.2f}% at epoch "
                 f"{best['epoch'] + 1}, final {mine[-1]['val_acc1']:.2f}% after {plural(mine[-1]['epoch'] + 1, 'epoch')}")
    trained = [r for r in rows if r.get("images_per_s")]
    images = sum(r.get("train_images", 0) for r in trained)
    busy = sum(r["train_images"] / r["images_per_s"] for r in trained if r.get("train_images"))
    head += f" | {_duration(seconds)} this start" + (f", {images / busy:.0f} train img/s" if busy else "")
    from gssl_fast import checkpoint

    # A staged run's weights: those of the stage whose accuracy the first line gives.
    found = checkpoint.list_checkpoints(checkpoint.stage_dir(run_dir, stage) if stage else run_dir)
    lines = [head, f"  checkpoint  {found[-1] if found else '(none)'}", f"  metrics     {Path(run_dir) / 'metrics.jsonl'}",
             f"  recipe      {Path(run_dir) / 'config.toml'}", f"  report      python -m gssl_fast.report {run_dir}"]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {word}{'' if n == 1 else 's'}"
