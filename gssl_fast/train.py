"""The trainer's command line and one start of it.

    accelerate launch --config_file launch/one_process.yaml -q -m gssl_fast.train recipes/tinyimagenet.toml
    python -m gssl_fast.train recipes/demo.toml --out runs/try --resume auto

Reads top to bottom: the run folder's refusals -> Accelerator -> data -> method (its
model, its streams) -> every check that needs them (stages, batch arithmetic) -> the run
folder opened -> the run (``gssl_fast.run.loop``), or the stages one run each
(``gssl_fast.run.stages``) -> a summary. Loaders are sharded by their own ``shard_id`` /
``num_shards`` and are never passed to ``accelerator.prepare``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

from gssl_fast.config import Recipe, load_recipe
from gssl_fast.run.epoch import Stopped
from gssl_fast.run.peers import PEER_EXIT, PeerLost
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
    import torch
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
    import torch

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


def fit(recipe: Recipe, *, out=None, resume=None, overwrite=False, stage: str | None = None) -> Path:
    """Trains ``recipe`` to its last step (every stage of a staged method, or ``stage``
    alone); returns the run folder.

    Everything that can be checked before the first step (the recipe, the run folder,
    the data, the model, every stage's batch arithmetic) is, before the run folder is
    created or an earlier run in it removed: a run that fails to start leaves it as it was.
    """
    from accelerate.utils import set_seed

    from gssl_fast.run.loaders import open_data
    from gssl_fast.run.loop import Machine, open_run, train_run
    from gssl_fast.methods import MethodContext, build_method
    from gssl_fast.run.log import MetricsLog
    from gssl_fast.run.folder import METRICS, FolderLock, check_run_folder, open_run_folder, record_recipe, run_dir_of
    from gssl_fast.run.stages import check_stage, run_stages

    started, train = time.perf_counter(), recipe.train
    run_dir = run_dir_of(recipe.name, out)
    start_from = check_run_folder(run_dir, resume, overwrite, stage=stage)
    accelerator = make_accelerator(train, run_dir)
    with FolderLock(run_dir, accelerator) as lock:  # before anything in the folder can change
        threads = set_threads(train, accelerator)
        recipe = dataclasses.replace(recipe, train=per_process(train, accelerator.num_processes))
        set_seed(recipe.train.seed)  # the same initial weights on every process
        data = open_data(recipe.data, recipe.train.loader, accelerator)
        method = build_method(recipe.method, MethodContext.of(recipe, data.class_counts, data.mean, data.std,
                                                              train_labels=data.train.labels,
                                                              classes=tuple(data.train.classes), run_dir=run_dir,
                                                              main_process=accelerator.is_main_process))
        check_stage(method, run_dir, stage)
        for check in method.batch_checks():
            check.refuse_empty(accelerator.num_processes)
        open_run_folder(run_dir, overwrite, accelerator)
        lock.take()  # a folder made just now
        machine = Machine(accelerator, threads, data.kept(run_dir))
        if method.stages():
            run_stages(recipe, method, run_dir, machine, resume=resume, only=stage)
        else:
            run = open_run(recipe, method, machine, run_dir, MetricsLog(run_dir / METRICS))
            train_run(run, start_from, before_start=lambda: record_recipe(recipe, run_dir, accelerator))
    accelerator.end_training()
    if accelerator.is_main_process:
        from gssl_fast.run.progress import run_summary

        print(run_summary(run_dir, MetricsLog(run_dir / METRICS).read(), time.perf_counter() - started), flush=True)
    return run_dir


if __name__ == "__main__":
    sys.exit(main())
