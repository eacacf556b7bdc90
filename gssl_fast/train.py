"""The Accelerate training loop and its command line.

    accelerate launch -m gssl_fast.train recipes/tinyimagenet.toml [--set train.epochs=3]
    python -m gssl_fast.train recipes/demo.toml --out runs/try --resume auto

Reads top to bottom: Accelerator -> data -> method (its model, its streams) -> one
loader per stream -> optimizer and schedule -> prepare -> resume -> epochs (train,
evaluate, log, checkpoint). The loop knows only the method contract of
``gssl_fast.methods.base``: it backpropagates the step's ``loss`` and logs the other
scalars by name. Optimizer steps are counted (``train.steps`` or ``train.epochs``);
an epoch of the main stream is the unit of evaluation, logging and checkpoints.
Loaders are sharded by their own ``shard_id`` / ``num_shards`` and are never passed
to ``accelerator.prepare``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gssl_fast import checkpoint
from gssl_fast.config import Recipe, load_recipe, recipe_to_toml
from gssl_fast.run_folder import record_recipe
from gssl_fast.epoch import Partial, Stopped, epoch_row, stopping, train_one_epoch
from gssl_fast.faults import crash_point
from gssl_fast.peers import PEER_EXIT, PeerLost, broadcast_buffers, register, replicas_in_sync
from pipelines.errors import UserError

USAGE_EXIT = 2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gssl-train", description="Train G-SSL from a TOML recipe.")
    p.add_argument("recipe", help="recipe TOML file, e.g. recipes/demo.toml")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe key (TOML value; bare words are strings); repeatable")
    p.add_argument("--out", default=None, help="run folder (default: runs/<recipe name>)")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="continue from the newest checkpoint of the run folder (auto) or from PATH")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a run folder that holds an earlier run")
    p.add_argument("--stage", default=None, metavar="NAME",
                   help="run this stage of a staged method alone (its earlier stages must be done)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.set)
        fit(recipe, out=args.out, resume=args.resume, overwrite=args.overwrite, stage=args.stage)
    except UserError as e:
        # Every process hits the same error; one message is enough.
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT
    except Stopped as stop:
        if os.environ.get("RANK", "0") == "0":
            print(f"stopped by {signal.Signals(stop.signum).name} at {stop.where}: wrote {stop.path}; continue "
                  f"with --resume auto (exit status {128 + stop.signum})", file=sys.stderr, flush=True)
        return 128 + stop.signum
    except PeerLost as e:  # every surviving process says so: each names itself
        print(f"error: {e}", file=sys.stderr, flush=True)
        return PEER_EXIT
    return 0


def make_accelerator(cfg, run_dir: Path | None = None):
    """An ``Accelerator`` for ``TrainConfig`` ``cfg``; a tracker (``train.log_with``)
    writes under ``run_dir``.

    Without CUDA it must be told ``cpu=True``: only then do several launched processes
    join one gloo process group instead of each training alone.
    """
    from accelerate import Accelerator

    cpu = cfg.cpu or not torch.cuda.is_available()
    check_precision(cfg.mixed_precision, cpu)
    tracker = None if cfg.log_with == "none" else cfg.log_with
    try:
        return Accelerator(cpu=cpu, mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum_steps,
                           log_with=tracker, project_dir=str(run_dir) if tracker and run_dir else None)
    except (ValueError, ImportError) as e:
        raise UserError(f"Accelerate cannot run train.mixed_precision = {cfg.mixed_precision!r}, train.log_with = "
                        f"{cfg.log_with!r} here: {str(e).splitlines()[0]}") from None


def check_precision(precision: str, cpu: bool) -> None:
    """Refuses a precision that would not run as asked; says when the recipe overrides
    ``accelerate launch --mixed_precision``."""
    if cpu and precision == "fp16":
        raise UserError("train.mixed_precision = 'fp16' changes nothing on the CPU (its autocast runs bf16 only); "
                        "set 'bf16' or 'no', or train on a GPU")
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched and launched != precision and os.environ.get("RANK", "0") == "0":
        print(f"note: the recipe's train.mixed_precision = {precision!r} replaces accelerate launch's "
              f"--mixed_precision {launched}", file=sys.stderr, flush=True)


def set_threads(cfg, accelerator) -> int:
    """torch threads for this process: ``cfg.num_threads``, or the cores this process
    may use shared among the processes of its machine. ``accelerate launch`` sets
    OMP_NUM_THREADS=1, which would leave all but one core idle on a CPU run."""
    from pipelines.system import usable_cores

    n = cfg.num_threads
    if n == 0:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        n = max(usable_cores() // max(local, 1), 1)
    torch.set_num_threads(n)
    return n


def per_process(cfg, processes: int):
    """``TrainConfig`` ``cfg`` with ``batch_size`` per process: ``global_batch_size /
    processes`` when a global batch is asked for (so a run keeps the paper's batch on any
    number of processes), else as it is (the global batch is then ``batch_size x
    processes``; the lr is never rescaled)."""
    g = cfg.global_batch_size
    if not g:
        return cfg
    if g % processes:
        raise UserError(f"train.global_batch_size = {g} is not a multiple of the {processes} processes; "
                        f"pick a multiple of {processes}, or set train.batch_size (per process) instead")
    return dataclasses.replace(cfg, batch_size=g // processes)


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


def fit(recipe: Recipe, *, out=None, resume=None, overwrite=False, stage: str | None = None) -> Path:
    """Trains ``recipe`` to its last step (every stage of a staged method, or ``stage``
    alone); returns the run folder.

    Everything that can be checked before the first step (the recipe, the run folder,
    the data, the model, every stage's batch arithmetic) is, before the run folder is
    created or an earlier run in it removed: a run that fails to start leaves it as it was.
    """
    from accelerate.utils import set_seed

    from gssl_fast.loaders import check_batches, input_normalization, loader_source, report_skipped, written_sources
    from gssl_fast.methods import MethodContext, build_method
    from gssl_fast.run_folder import check_run_folder, open_run_folder, run_dir_of
    from gssl_fast.stages import check_stage, run_stages

    started, train = time.perf_counter(), recipe.train
    run_dir = run_dir_of(recipe.name, out)
    start_from = check_run_folder(run_dir, resume, overwrite, stage=stage)
    accelerator = make_accelerator(train, run_dir)
    threads = set_threads(train, accelerator)
    recipe = dataclasses.replace(recipe, train=per_process(train, accelerator.num_processes))
    set_seed(recipe.train.seed)  # the same initial weights on every process
    data = {split: loader_source(recipe, split, run_dir, accelerator) for split in ("train", "val")}
    train_ds = data["train"][1]
    counts = np.bincount(train_ds.labels, minlength=len(train_ds.classes))
    mean, std = input_normalization(recipe.data, train_ds)
    method = build_method(recipe.method, MethodContext.of(recipe, counts, mean, std, train_labels=train_ds.labels,
                                                          classes=tuple(train_ds.classes), run_dir=run_dir, main_process=accelerator.is_main_process))
    check_stage(method, run_dir, stage)
    for check in method.batch_checks():
        check_batches(check, accelerator.num_processes)
    open_run_folder(run_dir, overwrite, accelerator)
    data = written_sources(recipe, data, run_dir, accelerator)
    report_skipped(data, run_dir, accelerator)
    run = dict(accelerator=accelerator, threads=threads, data=data)
    if method.stages():
        run_stages(recipe, method, run_dir, run, resume=resume, only=stage, train=train_method)
    else:
        train_method(recipe, method, run_dir, start_from, **run)
    accelerator.end_training()
    if accelerator.is_main_process:
        from gssl_fast.metrics import MetricsLog
        from gssl_fast.progress import run_summary

        print(run_summary(run_dir, MetricsLog(run_dir / "metrics.jsonl").read(), time.perf_counter() - started),
              flush=True)
    return run_dir


def train_method(recipe: Recipe, method, run_dir: Path, start_from: Path | None, *, accelerator, threads, data,
                 stage: str = "") -> None:
    """One training run of ``method`` (a whole run, or one stage of a staged method) in
    ``run_dir``: loaders, optimizer and schedule, prepare, resume from ``start_from``, epochs."""
    from gssl_fast.loaders import build_train_loaders, build_val_loader, steps_in_epoch
    from gssl_fast.optim import build_optimizer, build_scheduler

    train = recipe.train
    (train_src, train_ds), (val_src, val_ds) = data["train"], data["val"]
    loaders = build_train_loaders(recipe, method.streams(), train_src, accelerator)
    val_loader = build_val_loader(recipe, val_src, accelerator)
    crash_point("data")
    method.attach_loaders(train_eval=lambda subset=None: build_val_loader(recipe, train_src, accelerator, subset))
    batches = steps_in_epoch(next(iter(loaders.values())), train)
    per_epoch = batches // train.grad_accum_steps
    plan = StepPlan(batches, train.grad_accum_steps, train.steps or train.epochs * per_epoch)
    optimizer = build_optimizer(method.parameters_for_optimizer(method.model), recipe.optim)
    scheduler = build_scheduler(optimizer, recipe.optim, steps_per_epoch=per_epoch, epochs=plan.total_steps / per_epoch)
    # Compiled for training only: evaluation, checkpoints and load_model use method.model.
    model = torch.compile(method.model) if train.compile else method.model
    model, optimizer = accelerator.prepare(model, optimizer)
    first_epoch, partial, rng = (checkpoint.restore(start_from, method, optimizer, scheduler, accelerator)
                                 if start_from else (0, None, None))
    if not stage:  # a stage's folder records the run's recipe (gssl_fast.stages)
        record_recipe(recipe, run_dir, accelerator)
    method.on_train_start()
    if accelerator.is_main_process:
        from gssl_fast.progress import describe

        if first_epoch >= plan.epochs:
            print(f"{run_dir}: already finished ({plan.epochs} epochs, {plan.total_steps} steps); nothing to do",
                  flush=True)
        else:
            describe(recipe, accelerator, threads, train_ds, val_ds, method, plan, first_epoch, stage=stage)
    run_epochs(recipe, method, model, optimizer, scheduler, loaders, val_loader, accelerator,
               run_dir=run_dir, first_epoch=first_epoch, plan=plan, threads=threads, stage=stage,
               partial=Partial.of(partial, rng, accelerator.process_index))


def run_epochs(recipe, method, model, optimizer, scheduler, loaders, val_loader, accelerator, *,
               run_dir: Path, first_epoch: int, plan: StepPlan, threads: int, stage: str = "",
               partial: Partial | None = None) -> None:
    """Train, evaluate, log and checkpoint each epoch from ``first_epoch`` on (from
    ``partial``'s step of it after a preemption). A stage of a staged method logs into
    the run's metrics.jsonl (the folder above ``stages/``) with a ``stage`` field. A
    SIGTERM or SIGINT writes a checkpoint at the next step boundary and raises ``Stopped``."""
    def resume_hint() -> str:
        kept = checkpoint.list_checkpoints(run_dir)
        return f"{'the newest checkpoint is ' + str(kept[-1]) if kept else 'no checkpoint yet'}: rerun with --resume auto"

    with stopping(register(accelerator), accelerator.process_index, resume_hint) as preemption:
        _run_epochs(recipe, method, model, optimizer, scheduler, loaders, val_loader, accelerator, run_dir=run_dir,
                    first_epoch=first_epoch, plan=plan, threads=threads, stage=stage, partial=partial,
                    preemption=preemption)


def _run_epochs(recipe, method, model, optimizer, scheduler, loaders, val_loader, accelerator, *, run_dir, first_epoch,
                plan, threads, stage, partial, preemption) -> None:
    from gssl_fast.metrics import MetricsLog
    from gssl_fast.progress import Progress, scalars_of, summary_line, tracker_config
    from gssl_fast.stages import run_folder_of

    train, rank = recipe.train, accelerator.process_index
    plain = method.model  # the module itself: not wrapped by DDP, not compiled
    log = MetricsLog(run_folder_of(run_dir, stage) / "metrics.jsonl", stage=stage)
    if accelerator.is_main_process:
        log.truncate_after(first_epoch - 1)
    if train.log_with != "none":
        # Events go to <run>/<tracker>/: every scalar of metrics.jsonl, by the same name.
        accelerator.init_trackers(train.log_with, config=tracker_config(recipe))
    best = best_so_far(log.read_stage()[:first_epoch])
    for epoch in range(first_epoch, plan.epochs):
        start = time.perf_counter()
        # Reseeded per (seed, rank, epoch): a resumed run draws what an uninterrupted one
        # would. numpy too: timm's Mixup draws its mixing from numpy's global stream.
        torch.manual_seed(checkpoint_seed(train.seed, rank, epoch))
        np.random.seed(checkpoint_seed(train.seed, rank, epoch) % (1 << 32))
        method.on_epoch_start(epoch)
        steps = plan.batches_in(epoch)
        progress = Progress(steps, desc=f"epoch {epoch + 1}/{plan.epochs}", enabled=accelerator.is_main_process)
        try:
            names, sums, images = train_one_epoch(method, model, optimizer, scheduler, loaders, epoch=epoch,
                                                  accelerator=accelerator, steps=steps, progress=progress,
                                                  start=partial, preemption=preemption,
                                                  skip_nonfinite=train.nonfinite == "skip")
        except Stopped as stop:
            progress.close()
            stop.path = checkpoint.save_checkpoint(run_dir, epoch, recipe_to_toml(recipe), method, optimizer,
                                                   scheduler, accelerator, train.keep_checkpoints + 1,
                                                   partial=stop.partial.state(accelerator))
            stop.where = f"epoch {epoch + 1}, step {stop.partial.step}"
            raise
        partial = None
        progress.close()
        train_seconds = time.perf_counter() - start
        sums = accelerator.reduce(sums, reduction="sum") / accelerator.num_processes
        images = int(accelerator.reduce(torch.tensor(images, device=accelerator.device), reduction="sum"))
        broadcast_buffers(plain, accelerator)
        report = method.evaluate(plain, val_loader, accelerator=accelerator, epoch=epoch,
                                 last=epoch == plan.epochs - 1)
        trained = epoch_row(names, sums, steps)
        row = {**({"stage": stage} if stage else {}), "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
               **trained, **report}
        if "val_acc1" in row and row["val_acc1"] > best[0]:
            best = (row["val_acc1"], epoch)
        row.update(best_val_acc1=best[0], best_epoch=best[1], train_images=images,
                   images_per_s=images / train_seconds, seconds=time.perf_counter() - start,
                   world_size=accelerator.num_processes, threads=threads)
        if accelerator.num_processes > 1:
            row["replicas_in_sync"] = replicas_in_sync(plain, accelerator)
        # Log before the checkpoint: a run killed in between redoes this epoch, and the
        # resumed run drops the orphaned line (truncate_after) instead of losing one.
        if accelerator.is_main_process:
            log.append(row)
            print(summary_line(row, plan.epochs, train_keys=trained), flush=True)
        if train.log_with != "none":
            accelerator.log({f"{stage}/{k}" if stage else k: v for k, v in scalars_of(row).items()}, step=epoch)
        path = checkpoint.save_checkpoint(run_dir, epoch + 1, recipe_to_toml(recipe), method, optimizer, scheduler,
                                          accelerator, train.keep_checkpoints)
        signum = preemption.agreed(0, True, accelerator) if epoch < plan.epochs - 1 else 0
        if signum:  # asked for while the epoch was evaluated or saved
            stop = Stopped(signum, Partial())
            stop.path, stop.where = path, f"the end of epoch {epoch + 1}"
            raise stop


def best_so_far(rows: list[dict]) -> tuple[float, int]:
    """``(best val_acc1, its epoch)`` of the logged rows; ``(-1, -1)`` before any."""
    scored = [(r["val_acc1"], r["epoch"]) for r in rows if "val_acc1" in r]
    return max(scored, key=lambda t: t[0], default=(-1.0, -1))


def checkpoint_seed(seed: int, rank: int, epoch: int) -> int:
    from pipelines.sampling import derive_seed

    return derive_seed(seed, "torch", rank, epoch)


if __name__ == "__main__":
    sys.exit(main())
