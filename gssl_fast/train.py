"""The Accelerate training loop and its command line.

    accelerate launch -m gssl_fast.train recipes/tinyimagenet.toml [--set train.epochs=3]
    python -m gssl_fast.train recipes/demo.toml --out runs/try --resume auto

Reads top to bottom: Accelerator -> data -> loaders -> task (timm backbone + gated
heads + losses) -> optimizer and schedule -> prepare -> resume -> epochs (train,
evaluate, log, checkpoint). Loaders are sharded by their own ``shard_id`` /
``num_shards`` and are never passed to ``accelerator.prepare``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gssl_fast import checkpoint
from gssl_fast.config import Recipe, load_recipe, save_recipe
from gssl_fast.errors import UserError

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
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.set)
        fit(recipe, out=args.out, resume=args.resume, overwrite=args.overwrite)
    except UserError as e:
        # Every process hits the same error; one message is enough.
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT
    return 0


def make_accelerator(cfg):
    """An ``Accelerator`` for ``TrainConfig`` ``cfg``.

    Without CUDA it must be told ``cpu=True``: only then do several launched processes
    join one gloo process group instead of each training alone.
    """
    from accelerate import Accelerator

    cpu = cfg.cpu or not torch.cuda.is_available()
    try:
        return Accelerator(cpu=cpu, mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum_steps)
    except ValueError as e:
        raise UserError(f"train.mixed_precision = {cfg.mixed_precision!r} is not possible here: {e}") from None


def set_threads(cfg, accelerator) -> int:
    """torch threads for this process: ``cfg.num_threads``, or the cores this process
    may use shared among the processes of its machine. ``accelerate launch`` sets
    OMP_NUM_THREADS=1, which would leave all but one core idle on a CPU run."""
    n = cfg.num_threads
    if n == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        n = max(cores // max(local, 1), 1)
    torch.set_num_threads(n)
    return n


def prepare_run_dir(recipe: Recipe, out, resume, overwrite: bool, accelerator) -> tuple[Path, Path | None]:
    """The run folder and the checkpoint to resume from (None: fresh start)."""
    run_dir = Path(out) if out else Path("runs") / recipe.name
    found = checkpoint.list_checkpoints(run_dir)
    if found and not resume and not overwrite:
        raise UserError(
            f"{run_dir} holds an earlier run (newest checkpoint {found[-1].name}); continue it with "
            "--resume auto, start over with --overwrite, or pick another folder with --out"
        )
    start = checkpoint.resolve_resume(resume, run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if overwrite and not start:
            for old in found:
                old.unlink()
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            shutil.rmtree(run_dir / "data", ignore_errors=True)  # .beton files of the old recipe
        save_recipe(recipe, run_dir / "config.toml")
    accelerator.wait_for_everyone()
    return run_dir, start


def train_one_epoch(task, optimizer, scheduler, loader, *, accelerator, steps: int, channels_last: bool, progress):
    """One epoch of G-SSL steps; returns summed statistics as a ``[S]`` float tensor
    laid out by :func:`stat_names` (not yet reduced across processes)."""
    task.train()
    tasks = accelerator.unwrap_model(task).tasks
    totals = None
    for i, batch in enumerate(loader):
        if i == steps:
            break
        images = batch["images"]
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = {f"target_{t}": batch[f"target_{t}"] for t in tasks}
        with accelerator.accumulate(task):
            out = task(images, batch["labels"], targets)
            accelerator.backward(out["loss"])
            optimizer.step()
            if accelerator.sync_gradients:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        row = step_stats(out, targets, tasks, images.shape[0])
        totals = row if totals is None else totals + row
        progress.update(images.shape[0] * accelerator.num_processes, lambda: {"loss": out["loss"].item()})
    return totals


def stat_names(tasks) -> list[str]:
    return (["loss", "loss_cls", "loss_ssl"] + [f"loss_{t}" for t in tasks] + [f"gate_{t}" for t in tasks]
            + [f"correct_{t}" for t in tasks] + ["count"])


def step_stats(out: dict, targets: dict, tasks, batch_size: int) -> torch.Tensor:
    """Batch-size-weighted sums of one step, on the device (no host sync per step)."""
    b = float(batch_size)
    zero = out["loss"].detach().new_zeros(())
    vals = [out["loss"].detach() * b, out["loss_cls"].detach() * b, out.get("loss_ssl", zero).detach() * b]
    vals += [out[f"loss_{t}"].detach() * b for t in tasks]
    vals += [out["gate"][j].detach() * b for j in range(len(tasks))]
    vals += [(out["pretext_logits"][t].argmax(1) == targets[f"target_{t}"]).sum().to(zero.dtype) for t in tasks]
    vals.append(zero + b)
    return torch.stack([v.float() for v in vals])


def epoch_row(totals: torch.Tensor, tasks) -> dict:
    """Turns reduced sums into the metrics.jsonl fields of the training phase."""
    s = dict(zip(stat_names(tasks), totals.tolist()))
    n = max(s["count"], 1.0)
    row = {"train_loss": s["loss"] / n, "loss_cls": s["loss_cls"] / n, "loss_ssl": s["loss_ssl"] / n}
    row.update({f"loss_{t}": s[f"loss_{t}"] / n for t in tasks})
    row["gate"] = {t: s[f"gate_{t}"] / n for t in tasks}
    row["pretext_acc"] = {t: 100.0 * s[f"correct_{t}"] / n for t in tasks}
    row["train_images"] = int(s["count"])
    return row


def fit(recipe: Recipe, *, out=None, resume=None, overwrite=False) -> Path:
    """Trains ``recipe`` to its last epoch; returns the run folder."""
    from accelerate.utils import set_seed

    from gssl_fast.task import build_task

    train = recipe.train
    accelerator = make_accelerator(train)
    threads = set_threads(train, accelerator)
    run_dir, start_from = prepare_run_dir(recipe, out, resume, overwrite, accelerator)
    set_seed(train.seed)  # the same initial weights on every process
    from gssl_fast.loaders import build_loaders, loader_source, steps_in_epoch

    train_src, train_ds = loader_source(recipe, "train", run_dir, accelerator)
    val_src, val_ds = loader_source(recipe, "val", run_dir, accelerator)
    train_loader, val_loader = build_loaders(recipe, train_src, val_src, accelerator)
    counts = np.bincount(train_ds.labels, minlength=len(train_ds.classes))
    task = build_task(recipe.model, recipe.pretext, recipe.loss, num_classes=len(train_ds.classes), class_counts=counts)
    if recipe.model.channels_last:
        task = task.to(memory_format=torch.channels_last)
    steps = steps_in_epoch(train_loader, train)
    from gssl_fast.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(task.parameters(), recipe.optim)
    scheduler = build_scheduler(optimizer, recipe.optim, steps_per_epoch=steps // train.grad_accum_steps, epochs=train.epochs)
    task, optimizer = accelerator.prepare(task, optimizer)
    first_epoch = restore(start_from, task, optimizer, scheduler, accelerator) if start_from else 0
    if accelerator.is_main_process:
        describe(recipe, accelerator, threads, train_ds, val_ds, task, steps, first_epoch)
    run_epochs(recipe, task, optimizer, scheduler, train_loader, val_loader, accelerator,
               run_dir=run_dir, first_epoch=first_epoch, steps=steps, counts=counts, threads=threads)
    accelerator.end_training()
    return run_dir


def run_epochs(recipe, task, optimizer, scheduler, train_loader, val_loader, accelerator, *,
               run_dir: Path, first_epoch: int, steps: int, counts, threads: int) -> None:
    """Train, evaluate, log and checkpoint each epoch from ``first_epoch`` on."""
    from gssl_fast.evaluate import evaluate
    from gssl_fast.metrics import MetricsLog
    from gssl_fast.progress import Progress

    train, rank = recipe.train, accelerator.process_index
    model = accelerator.unwrap_model(task)
    log = MetricsLog(run_dir / "metrics.jsonl")
    if accelerator.is_main_process:
        log.truncate_after(first_epoch - 1)
    longtail = recipe.data.longtail != "none"
    for epoch in range(first_epoch, train.epochs):
        start = time.perf_counter()
        # Reseeded per (seed, rank, epoch): a resumed run draws what an uninterrupted one would.
        torch.manual_seed(checkpoint_seed(train.seed, rank, epoch))
        model.class_loss.set_epoch(epoch)  # deferred re-weighting from loss.drw_start_epoch
        train_loader.set_epoch(epoch)
        progress = Progress(steps, desc=f"epoch {epoch + 1}/{train.epochs}", enabled=accelerator.is_main_process)
        totals = train_one_epoch(task, optimizer, scheduler, train_loader, accelerator=accelerator,
                                 steps=steps, channels_last=recipe.model.channels_last, progress=progress)
        progress.close()
        train_seconds = time.perf_counter() - start
        totals = accelerator.reduce(totals, reduction="sum")
        broadcast_buffers(model, accelerator)
        report = evaluate(model, val_loader, accelerator=accelerator, num_classes=len(counts),
                          train_counts=counts if longtail else None)
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **epoch_row(totals, model.tasks), **report}
        row.update(images_per_s=row["train_images"] / train_seconds, seconds=time.perf_counter() - start,
                   world_size=accelerator.num_processes, threads=threads)
        if accelerator.num_processes > 1:
            row["replicas_in_sync"] = replicas_in_sync(model, accelerator)
        # Log before the checkpoint: a run killed in between redoes this epoch, and the
        # resumed run drops the orphaned line (truncate_after) instead of losing one.
        if accelerator.is_main_process:
            log.append(row)
            print(summary_line(row, train.epochs), flush=True)
        save_checkpoint(run_dir, epoch + 1, task, optimizer, scheduler, accelerator, train.keep_checkpoints)


def broadcast_buffers(model, accelerator) -> None:
    """Copies process 0's buffers (BatchNorm running statistics) to every process.

    DDP broadcasts them at the start of each forward, but the forward then updates them
    from the local batch, so after an epoch they differ slightly between processes;
    evaluation and the checkpoint should see one model.
    """
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)


def replicas_in_sync(model, accelerator) -> bool:
    """Whether every process holds bit-identical parameters and buffers, compared by a
    float64 fingerprint (sum and sum of squares of each tensor) gathered from all."""
    tensors = list(model.state_dict().values())
    prints = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]) for t in tensors])
    everyone = accelerator.gather(prints[None].to(accelerator.device))
    return bool((everyone == everyone[:1]).all())


def checkpoint_seed(seed: int, rank: int, epoch: int) -> int:
    from pipelines.sampling import derive_seed

    return derive_seed(seed, "torch", rank, epoch)


def save_checkpoint(run_dir, epochs_done, task, optimizer, scheduler, accelerator, keep) -> None:
    """Main process writes atomically; the others wait so nobody races ahead of it."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {
            "epoch": epochs_done,
            "model": accelerator.unwrap_model(task).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "rng": checkpoint.rng_state(),
        }
        checkpoint.save_atomic(state, checkpoint.checkpoint_path(run_dir, epochs_done))
        checkpoint.prune(run_dir, keep)
    accelerator.wait_for_everyone()


def restore(path: Path, task, optimizer, scheduler, accelerator) -> int:
    """Loads a checkpoint into the prepared task and optimizer; returns finished epochs."""
    state = checkpoint.load(path)
    try:
        accelerator.unwrap_model(task).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"checkpoint {path} does not fit this recipe's model: {str(e).splitlines()[0]}") from None
    scheduler.load_state_dict(state["scheduler"])
    if accelerator.scaler is not None and state.get("scaler"):
        accelerator.scaler.load_state_dict(state["scaler"])
    checkpoint.set_rng_state(state["rng"])
    if accelerator.is_main_process:
        print(f"resumed from {path} after epoch {state['epoch']}", flush=True)
    return int(state["epoch"])


def describe(recipe, accelerator, threads, train_ds, val_ds, task, steps, first_epoch) -> None:
    params = sum(p.numel() for p in accelerator.unwrap_model(task).parameters())
    print(
        f"gssl_fast: {recipe.name} | device {accelerator.device} x{accelerator.num_processes} "
        f"({accelerator.distributed_type}), {threads} threads/process, precision {accelerator.mixed_precision}\n"
        f"data {recipe.data.name}: {len(train_ds.labels)} train / {len(val_ds.labels)} val images, {len(train_ds.classes)} classes, "
        f"{recipe.data.image_size}px, loader {recipe.train.loader}\n"
        f"model {recipe.model.backbone} + heads {list(recipe.pretext.tasks)} ({params / 1e6:.2f}M params), "
        f"gate {recipe.pretext.gate}/{recipe.pretext.combine}, lambda {recipe.pretext.lam}\n"
        f"{steps} steps/epoch, epochs {first_epoch + 1}..{recipe.train.epochs}",
        flush=True,
    )


def summary_line(row: dict, epochs: int) -> str:
    pre = " ".join(f"{t} {a:.1f}%" for t, a in row["pretext_acc"].items())
    gate = " ".join(f"{t} {g:.3f}" for t, g in row["gate"].items())
    return (f"epoch {row['epoch'] + 1}/{epochs}: loss {row['train_loss']:.4f} val top-1 {row['val_acc1']:.2f}% "
            f"top-5 {row['val_acc5']:.2f}% | pretext {pre or '-'} | gate {gate or '-'} | "
            f"{row['images_per_s']:.0f} img/s, {row['seconds']:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
