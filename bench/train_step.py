"""Training throughput: plain supervised vs LoRot-E vs G-SSL with three gated tasks on
the same backbone and batch, and the trainer's epoch throughput with its real loader
against the same loop fed a synthetic batch (what the loader costs end to end).

    python -m bench.train_step [--backbone resnet20_cifar] [--batch 128] [--json out.json] [--quick]

Part 1, one optimizer step (forward, backward, SGD step) on a synthetic float32
``[B, 3, 32, 32]`` batch, three ``gssl_fast.model.task.GSSLTask`` built alike (same seed):
- supervised: ``tasks=()`` (backbone + class head)
- lorot-e: ``tasks=("rotation",)`` (one pretext head, no gate)
- g-ssl 3 gated: ``("rotation", "flip", "perm")``, reference gate, gated combination
``overhead`` = extra time per step against supervised (the pretext heads and gate).

Part 2, ``gssl_fast.run.epoch.train_one_epoch`` (the trainer's own loop, Accelerate,
G-SSL 3 gated) for ``--steps`` steps, fed by ``pipelines.torch`` over the built-in
shapes data, or by a synthetic loader delivering one prepared batch (no loader work).
``x_vs_synthetic`` is the loop's throughput with the real loader over the synthetic one.

Part 3 (a cross-check, not interleaved): the full trainer, ``python -m gssl_fast.train``
on a shapes recipe of the same model and batch, ``images_per_s`` of its metrics.jsonl
(median over epochs after the first).

Parts 1 and 2 alternate their variants run by run (interleaved repeats) after warm-up.
Rows: images/s (median, min..max) and, on the CPU, the CPU time of this process per
run (steadier than wall time when other processes share the cores).
``--threads`` (default 1): on a machine shared with other processes a 2-thread OpenMP
region waits for a descheduled thread; a step here ran 4x slower with 2 threads than 1.

Targets (issue 5): G-SSL 3 gated within 5% of supervised per step; the trainer's epoch
throughput within 10% of the model's step throughput on synthetic data.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench._loaders import SameBatch
from bench.common import (
    bench_parser, check_target, header, load_average, print_table, print_targets, summarize, sync, time_interleaved,
    write_json,
)
from gssl_fast.config import LossConfig, ModelConfig, PretextConfig
from pipelines.localizable import TASKS
from pipelines.datasets.arrays import CIFAR_MEAN, CIFAR_STD

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {"supervised": (), "lorot-e": ("rotation",), "g-ssl 3 gated": tuple(TASKS)}
NUM_CLASSES = 10


def build(backbone: str, tasks, device: torch.device, seed: int = 0):
    """A GSSLTask (the recipe path: timm backbone, heads, CE) and its SGD optimizer."""
    from gssl_fast.model.task import build_task

    torch.manual_seed(seed)
    task = build_task(ModelConfig(backbone=backbone), PretextConfig(tasks=tuple(tasks)), LossConfig(),
                      num_classes=NUM_CLASSES, class_counts=[1] * NUM_CLASSES, mean=CIFAR_MEAN, std=CIFAR_STD).to(device)
    return task, torch.optim.SGD(task.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def synthetic_batch(batch: int, side: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    out = {"images": torch.randn(batch, 3, side, side, generator=g),
           "labels": torch.randint(NUM_CLASSES, (batch,), generator=g)}
    out.update({f"target_{t}": torch.randint(n, (batch,), generator=g) for t, n in TASKS.items()})
    return {k: v.to(device) for k, v in out.items()}


def step_fn(task, optimizer, batch: dict, steps: int):
    """``steps`` training steps on ``batch``, the work of one timed run."""
    targets = {f"target_{t}": batch[f"target_{t}"] for t in task.tasks}

    def run():
        for _ in range(steps):
            out = task(batch["images"], batch["labels"], targets)
            out["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return run


def with_cpu_time(fns: dict) -> tuple[dict, dict]:
    """Wraps each callable to record this process's CPU seconds per call."""
    cpu = {name: [] for name in fns}

    def wrap(name, fn):
        def run():
            c0 = time.process_time()
            fn()
            cpu[name].append(time.process_time() - c0)
        return run
    return {name: wrap(name, fn) for name, fn in fns.items()}, cpu


def rows_of(times: dict, cpu: dict, items: int, warmup: int, part: str, device) -> list[dict]:
    rows = []
    for name, t in times.items():
        cpu_s = statistics.median(cpu[name][warmup:]) if device.type == "cpu" else None
        rows.append({"part": part, "variant": name, **summarize(t, items), "cpu_s_median": cpu_s})
    return rows


def part_steps(args, device) -> list[dict]:
    batch = synthetic_batch(args.batch, args.side, device)
    fns = {name: step_fn(*build(args.backbone, tasks, device), batch, args.steps_per_run)
           for name, tasks in VARIANTS.items()}
    fns, cpu = with_cpu_time(fns)
    times = time_interleaved(fns, repeats=args.repeats, warmup=2, device=device)
    rows = rows_of(times, cpu, args.batch * args.steps_per_run, 2, "step (synthetic batch)", device)
    base = rows[0]
    for r in rows:
        r["overhead"] = base["items_per_s"] / r["items_per_s"] - 1
        if r["cpu_s_median"] is not None:
            r["overhead_cpu"] = r["cpu_s_median"] / base["cpu_s_median"] - 1
    return rows


def part_epoch(args, device) -> list[dict]:
    """train_one_epoch with pipelines.torch vs with a synthetic loader, interleaved."""
    from dataclasses import replace

    from gssl_fast.config import Recipe, TrainConfig
    from gssl_fast.methods import MethodContext, build_method
    from gssl_fast.run.progress import Progress
    from gssl_fast.run.epoch import train_one_epoch
    from gssl_fast.run.loop import Machine, Run
    from gssl_fast.train import make_accelerator
    from pipelines.datasets.shapes import make_shapes
    from pipelines.torch import make_loader

    accelerator = make_accelerator(TrainConfig(cpu=device.type == "cpu"))
    torch.manual_seed(0)
    recipe = replace(Recipe(), model=ModelConfig(backbone=args.backbone), pretext=PretextConfig(tasks=tuple(TASKS)))
    method = build_method(recipe.method, MethodContext.of(recipe, [1] * NUM_CLASSES, CIFAR_MEAN, CIFAR_STD))
    optimizer = torch.optim.SGD(method.model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model, optimizer = accelerator.prepare(method.model, optimizer)
    data = make_shapes(args.steps * args.batch, image_size=args.side, seed=0)
    real = make_loader(data, batch_size=args.batch, tasks=tuple(TASKS), drop_last=True, normalize=False,
                       device=accelerator.device)
    synthetic = SameBatch(next(iter(real)), batches=args.steps)

    def epoch(loader):
        # Only what an epoch of steps reads: no folder, log, validation loader or plan.
        state = Run(recipe, method, Machine(accelerator, torch.get_num_threads(), {}), Path("."), None, model,
                    optimizer, scheduler, {"train": loader}, None, None)

        def run():
            progress = Progress(args.steps, desc="bench", enabled=False)
            train_one_epoch(state, 0, steps=args.steps, progress=progress)
            sync(device)
        return run

    fns, cpu = with_cpu_time({"train_one_epoch, pipelines.torch loader": epoch(real),
                              "train_one_epoch, synthetic loader": epoch(synthetic)})
    times = time_interleaved(fns, repeats=args.epoch_repeats, warmup=1, device=device)
    rows = rows_of(times, cpu, args.steps * args.batch, 1, "trainer epoch (g-ssl 3 gated)", device)
    for r in rows:
        r["x_vs_synthetic"] = r["items_per_s"] / rows[1]["items_per_s"]
    return rows


def part_fit(args, device) -> dict:
    """The whole trainer in a subprocess; images_per_s from its metrics.jsonl."""
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "bench_fit.toml"
        recipe.write_text(
            f'[data]\nname = "shapes"\nimage_size = {args.side}\ntrain_size = {args.steps * args.batch}\n'
            f'val_size = {args.batch}\n[model]\nbackbone = "{args.backbone}"\n'
            '[pretext]\ntasks = ["rotation", "flip", "perm"]\n'
            f'[train]\nepochs = {args.fit_epochs}\nbatch_size = {args.batch}\nnum_threads = {args.threads}\n'
            f'cpu = {"true" if device.type == "cpu" else "false"}\nkeep_checkpoints = 1\n')
        run_dir = Path(tmp) / "run"
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "gssl_fast.train", str(recipe), "--out", str(run_dir),
                               "--overwrite"], cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the trainer failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        wall = time.perf_counter() - t0
        epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [e["images_per_s"] for e in epochs[1:]] or [epochs[0]["images_per_s"]]
    return {"part": "full trainer (metrics.jsonl)", "variant": f"gssl_fast.train, {len(rates)} epochs after the first",
            "items_per_s": statistics.median(rates), "items_per_s_min": min(rates), "items_per_s_max": max(rates),
            "repeats": len(rates), "process_wall_s": wall}


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--backbone", default="resnet20_cifar", help="timm name (resnet32_cifar: the papers' LT model)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=9, help="interleaved runs per step variant")
    p.add_argument("--steps-per-run", type=int, default=1)
    p.add_argument("--steps", type=int, default=4, help="steps per trainer epoch (part 2, 3)")
    p.add_argument("--epoch-repeats", type=int, default=5, help="interleaved epochs per loader (part 2)")
    p.add_argument("--fit-epochs", type=int, default=3, help="epochs of the full trainer run (0: skip part 3)")
    args = p.parse_args(argv)
    if args.quick:
        args.backbone, args.batch, args.repeats, args.steps, args.epoch_repeats, args.fit_epochs = \
            "resnet8_cifar", 32, 3, 2, 2, 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = load_average()
    rows = part_steps(args, device) + part_epoch(args, device)
    if args.fit_epochs:
        rows.append(part_fit(args, device))
        step = next(r for r in rows if r["variant"] == "g-ssl 3 gated")["items_per_s"]
        rows[-1]["x_vs_synthetic"] = rows[-1]["items_per_s"] / step
    info = {**header(), "load_avg_1min_before": load_before, "backbone": args.backbone, "batch": args.batch,
            "side": args.side}
    cols = ["part", "variant", "items_per_s", "items_per_s_min", "items_per_s_max", "cpu_s_median", "overhead",
            "overhead_cpu", "x_vs_synthetic"]
    print_table("training throughput (images/s)", info, rows, cols)
    gssl = next(r for r in rows if r["variant"] == "g-ssl 3 gated")
    real = next(r for r in rows if r["variant"].startswith("train_one_epoch, pipelines.torch"))
    targets = [check_target("g-ssl 3 gated step overhead vs supervised", gssl["overhead"], 0.05, at_least=False),
               check_target("trainer epoch (pipelines.torch) / synthetic loader", real["x_vs_synthetic"], 0.9)]
    print_targets(targets)
    write_json(args.json, "train_step", {**info, "targets": targets}, rows)


if __name__ == "__main__":
    main()
