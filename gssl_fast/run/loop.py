"""The training loop of one run: its state (:class:`Run`) and its epochs.

Reads top to bottom: loaders of the method's streams -> optimizer and schedule ->
prepare -> resume -> epochs (train, evaluate, log, checkpoint). The loop knows only the
method contract of ``gssl_fast.methods.base``: it backpropagates the step's ``loss`` and
logs the other scalars by name. Optimizer steps are counted (``train.steps`` or
``train.epochs``); an epoch of the main stream is the unit of evaluation, logging and
checkpoints. A run of a staged method's stage is an ordinary run whose folder and log
the stage runner (``gssl_fast.run.stages``) chose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gssl_fast import checkpoint
from gssl_fast.config import Recipe, recipe_to_toml
from gssl_fast.run.epoch import Partial, Stopped, epoch_row, stopping, train_one_epoch
from gssl_fast.faults import crash_point
from gssl_fast.run.log import MetricsLog
from gssl_fast.run.peers import broadcast_buffers, register, replicas_in_sync
from pipelines.errors import UserError


@dataclass(frozen=True)
class StepPlan:
    """How many batches each epoch takes: ``batches`` of the main stream per full epoch
    (a whole number of accumulation rounds), ``total_steps`` optimizer steps in all
    (``train.steps``, or ``train.epochs`` full epochs); the last epoch may be short."""

    batches: int
    accum: int
    total_steps: int

    @property
    def steps_per_epoch(self) -> int:
        return self.batches // self.accum

    @property
    def epochs(self) -> int:
        return -(-self.total_steps // self.steps_per_epoch)

    def batches_in(self, epoch: int) -> int:
        return min(self.batches, (self.total_steps - epoch * self.steps_per_epoch) * self.accum)

    @classmethod
    def of(cls, loader, cfg) -> StepPlan:
        """The plan of a main stream's ``loader`` under the ``[train]`` section ``cfg``: one
        pass of it per epoch, or ``steps_per_epoch`` optimizer steps (the streams start
        new passes as they run out), a whole number of accumulation rounds."""
        n = cfg.steps_per_epoch * cfg.grad_accum_steps if cfg.steps_per_epoch else len(loader)
        if len(loader) == 0:
            n = 0
        n -= n % cfg.grad_accum_steps
        if n == 0:
            raise UserError(
                f"train.batch_size = {cfg.batch_size} x train.grad_accum_steps = {cfg.grad_accum_steps} per process "
                f"leaves no full step in an epoch of {len(loader.dataset) if hasattr(loader, 'dataset') else '?'} "
                "images; lower the batch size"
            )
        per_epoch = n // cfg.grad_accum_steps
        return cls(n, cfg.grad_accum_steps, cfg.steps or cfg.epochs * per_epoch)


@dataclass(frozen=True)
class Machine:
    """What a start of the trainer set up once for every run it trains: the
    ``Accelerator``, torch threads per process, and the data (``gssl_fast.run.loaders.Data``)."""

    accelerator: Any
    threads: int
    data: Any


@dataclass(frozen=True)
class Run:
    """One training run of a method, as its epochs use it.

    folder: where its checkpoints go; log: where its rows go (``metrics.jsonl``, with the
    log's tags); model: ``method.model`` prepared for training (DDP, compiled);
    loaders: one per stream of the method, the main one first; plan: the steps of each epoch.
    """

    recipe: Recipe
    method: Any
    machine: Machine
    folder: Path
    log: MetricsLog
    model: Any
    optimizer: Any
    scheduler: Any
    loaders: dict
    val_loader: Any
    plan: StepPlan

    @property
    def accelerator(self):
        return self.machine.accelerator


def open_run(recipe: Recipe, method, machine: Machine, folder: Path, log: MetricsLog) -> Run:
    """The loaders of ``method``'s streams, its optimizer and schedule, prepared."""
    from gssl_fast.model.optim import build_optimizer, build_scheduler

    train, data = recipe.train, machine.data
    loaders = data.stream_loaders(train, recipe.pretext.flip_axis, method.streams())
    val_loader = data.plain_loader(train)
    crash_point("data")
    method.attach_loaders(train_eval=lambda subset=None: data.plain_loader(train, "train", subset))
    plan = StepPlan.of(next(iter(loaders.values())), train)
    per_epoch = plan.steps_per_epoch
    optimizer = build_optimizer(method.parameters_for_optimizer(method.model), recipe.optim)
    scheduler = build_scheduler(optimizer, recipe.optim, steps_per_epoch=per_epoch, epochs=plan.total_steps / per_epoch)
    # Compiled for training only: evaluation, checkpoints and load_model use method.model.
    model = torch.compile(method.model) if train.compile else method.model
    model, optimizer = machine.accelerator.prepare(model, optimizer)
    return Run(recipe, method, machine, Path(folder), log, model, optimizer, scheduler, loaders, val_loader, plan)


def train_run(run: Run, start_from: Path | None, *, before_start=None) -> None:
    """Resumes ``run`` from ``start_from`` (None: a fresh start) and trains its epochs.
    ``before_start()`` runs once the checkpoint was accepted (it records the recipe)."""
    from gssl_fast.run.progress import describe

    accelerator, plan = run.accelerator, run.plan
    first_epoch, partial, rng = (checkpoint.restore(start_from, run.method, run.optimizer, run.scheduler, accelerator)
                                 if start_from else (0, None, None))
    if before_start is not None:
        before_start()
    run.method.on_train_start()
    if accelerator.is_main_process:
        if first_epoch >= plan.epochs:
            print(f"{run.folder}: already finished ({plan.epochs} epochs, {plan.total_steps} steps); nothing to do",
                  flush=True)
        else:
            data = run.machine.data
            describe(run.recipe, accelerator, run.machine.threads, data.train, data.datasets["val"], run.method, plan,
                     first_epoch, stage=" ".join(str(v) for v in run.log.tags().values()))
    run_epochs(run, first_epoch, Partial.of(partial, rng, accelerator.process_index))


def run_epochs(run: Run, first_epoch: int, partial: Partial | None = None) -> None:
    """Train, evaluate, log and checkpoint each epoch from ``first_epoch`` on (from
    ``partial``'s step of it after a preemption). A SIGTERM or SIGINT writes a
    checkpoint at the next step boundary and raises ``Stopped``."""
    from gssl_fast.run.progress import tracker_config

    accelerator, log = run.accelerator, run.log

    def resume_hint() -> str:
        kept = checkpoint.list_checkpoints(run.folder)
        return f"{'the newest checkpoint is ' + str(kept[-1]) if kept else 'no checkpoint yet'}: rerun with --resume auto"

    if accelerator.is_main_process:
        log.truncate_after(first_epoch - 1)
    if run.recipe.train.log_with != "none":
        # Events go to <run>/<tracker>/: every scalar of metrics.jsonl, by the same name.
        accelerator.init_trackers(run.recipe.train.log_with, config=tracker_config(run.recipe))
    best = best_so_far(log.read_mine()[:first_epoch])
    with stopping(register(accelerator), accelerator.process_index, resume_hint) as preemption:
        for epoch in range(first_epoch, run.plan.epochs):
            if run.method.early_stop():
                if accelerator.is_main_process:
                    print(f"{run.folder}: stopped early after {epoch} of {run.plan.epochs} epochs", flush=True)
                break
            best = one_epoch(run, epoch, partial, preemption, best)
            partial = None


def one_epoch(run: Run, epoch: int, partial: Partial | None, preemption, best: tuple[float, int]) -> tuple[float, int]:
    """Trains, evaluates, logs and checkpoints ``epoch``; returns the best
    ``(val_acc1, epoch)`` so far."""
    from gssl_fast.run.progress import Progress

    accelerator, train, plan = run.accelerator, run.recipe.train, run.plan
    start = time.perf_counter()
    # Reseeded per (seed, rank, epoch): a resumed run draws what an uninterrupted one
    # would. numpy too: timm's Mixup draws its mixing from numpy's global stream.
    seed = checkpoint_seed(train.seed, accelerator.process_index, epoch)
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    run.method.on_epoch_start(epoch)
    steps = plan.batches_in(epoch)
    progress = Progress(steps, desc=f"epoch {epoch + 1}/{plan.epochs}", enabled=accelerator.is_main_process)
    try:
        names, sums, images = train_one_epoch(run, epoch, steps=steps, progress=progress, start=partial,
                                              preemption=preemption)
    except Stopped as stop:
        stop.path = save(run, epoch, partial=stop.partial.state(accelerator))
        stop.where = f"epoch {epoch + 1}, step {stop.partial.step}"
        raise
    finally:
        progress.close()
    row, best, trained = epoch_report(run, epoch, (names, sums, images, steps), time.perf_counter() - start, best)
    row["seconds"] = time.perf_counter() - start
    log_row(run, row, trained)
    path = save(run, epoch + 1)
    signum = preemption.agreed(0, True, accelerator) if epoch < plan.epochs - 1 else 0
    if signum:  # asked for while the epoch was evaluated or saved
        stop = Stopped(signum, Partial())
        stop.path, stop.where = path, f"the end of epoch {epoch + 1}"
        raise stop
    return best


def save(run: Run, epochs_done: int, partial: dict | None = None) -> Path:
    """Checkpoints ``run`` after ``epochs_done`` epochs (and ``partial``'s step of the
    next: a preempted epoch, kept beside the ``train.keep_checkpoints`` newest)."""
    keep = run.recipe.train.keep_checkpoints + (partial is not None)
    return checkpoint.save_checkpoint(run.folder, epochs_done, recipe_to_toml(run.recipe), run.method, run.optimizer,
                                      run.scheduler, run.accelerator, keep, partial=partial)


def epoch_report(run: Run, epoch: int, trained: tuple, train_seconds: float,
                 best: tuple[float, int]) -> tuple[dict, tuple[float, int], list[str]]:
    """The metrics.jsonl row of ``epoch`` (its training sums ``trained`` = ``(names,
    sums, images, steps)`` reduced over the processes, the method's evaluation), the
    best ``(val_acc1, epoch)`` with it, and the row's training fields."""
    accelerator, plain = run.accelerator, run.method.model  # the module itself: not DDP-wrapped, not compiled
    names, sums, images, steps = trained
    sums = accelerator.reduce(sums, reduction="sum") / accelerator.num_processes
    images = int(accelerator.reduce(torch.tensor(images, device=accelerator.device), reduction="sum"))
    broadcast_buffers(plain, accelerator)
    report = run.method.evaluate(plain, run.val_loader, accelerator=accelerator, epoch=epoch,
                                 last=epoch == run.plan.epochs - 1)
    run.machine.data.note_skipped({"train": list(run.loaders.values()), "val": [run.val_loader]})
    fields = epoch_row(names, sums, steps)
    row = {**run.log.tags(), "epoch": epoch, "lr": run.optimizer.param_groups[0]["lr"], **fields, **report}
    if "val_acc1" in row and row["val_acc1"] > best[0]:
        best = (row["val_acc1"], epoch)
    row.update(best_val_acc1=best[0], best_epoch=best[1], train_images=images, images_per_s=images / train_seconds,
               world_size=accelerator.num_processes, threads=run.machine.threads)
    if accelerator.num_processes > 1:
        row["replicas_in_sync"] = replicas_in_sync(plain, accelerator)
    return row, best, list(fields)


def log_row(run: Run, row: dict, trained: list[str]) -> None:
    """Appends ``row`` to the run's log, prints the epoch line (``trained``: the
    method's training scalars) and hands the scalars to the tracker."""
    from gssl_fast.run.progress import scalars_of, summary_line

    accelerator = run.accelerator
    # Log before the checkpoint: a run killed in between redoes this epoch, and the
    # resumed run drops the orphaned line (truncate_after) instead of losing one.
    if accelerator.is_main_process:
        run.log.append(row)
        print(summary_line(row, run.plan.epochs, train_keys=trained, metrics=run.method.metrics()), flush=True)
    if run.recipe.train.log_with != "none":
        prefix = "".join(f"{v}/" for v in run.log.tags().values())
        accelerator.log({prefix + k: v for k, v in scalars_of(row).items()}, step=row["epoch"])


def best_so_far(rows: list[dict]) -> tuple[float, int]:
    """``(best val_acc1, its epoch)`` of the logged rows; ``(-1, -1)`` before any."""
    scored = [(r["val_acc1"], r["epoch"]) for r in rows if "val_acc1" in r]
    return max(scored, key=lambda t: t[0], default=(-1.0, -1))


def checkpoint_seed(seed: int, rank: int, epoch: int) -> int:
    from pipelines.sampling import derive_seed

    return derive_seed(seed, "torch", rank, epoch)
