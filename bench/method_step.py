"""Training step of each method variant: one full step (forward, backward, SGD step) of
every ``gssl_fast.methods`` variant on the same fixed synthetic batch, side by side.

    python -m bench.method_step [--backbone resnet20_cifar] [--batch 128] [--json out.json] [--quick]

Each variant is built as the trainer builds it: a ``Recipe`` whose ``[model]``,
``[pretext]`` and ``[method]`` sections differ, checked by the method's own rules,
``build_method(cfg, MethodContext.of(...))``, SGD from the recipe's ``[optim]``, and
``accelerator.prepare``. One timed run is one step as ``gssl_fast.train`` takes it:
``method.training_step(model, {"train": batch})``, ``accelerator.backward``,
``optimizer.step()``, ``optimizer.zero_grad()``. The batch is the loader contract's
(``images`` ``[B, 3, H, W]`` uint8 pixels, ``labels`` and ``target_<task>`` int64),
drawn once with a fixed seed and shared by every variant.

Variants (backbone, batch and image side shared):
- supervised: ``tasks=()``, cross-entropy on the class head (the ceiling: the plain step)
- g-ssl: ``tasks=("rotation", "flip", "perm")``, reference gate, gated combination
- mixup: supervised, ``mixup_alpha=1`` (timm ``Mixup``, soft-target cross-entropy)
- cutmix: supervised, ``cutmix_alpha=1``
- adversarial: PGD-10 (``AdversarialConfig`` defaults: eps 8/255, step 2/255), no tasks
- adversarial g-ssl: PGD-10 on the G-SSL loss, three gated tasks

The variants alternate step by step (``bench.common.time_interleaved``, each round in an
order rotated by the round) after ``--warmup`` untimed rounds. A PGD step costs about ten
plain ones, so a round times each variant without PGD ``--cheap-per-round`` times (3) and
each PGD variant once: 6 rounds give 18 plain steps and 6 PGD steps per variant, about
3 minutes for resnet20_cifar, batch 128, on one CPU thread.

Rows: ms per step (median, quartiles in the JSON, min..max), images/s and, on the CPU,
this process's CPU time per step; ``x_vs`` (wall) and ``x_vs_cpu`` = the median step
time over the median of the variant named in ``vs``, with the range of the same ratio
taken round by round (``*_round_min..max``; a round's value is its median step). The JSON
keeps every timed step (``wall_seconds``, ``cpu_seconds``). The header adds the
machine's CPU contention over the timed part: ``cpu_pressure`` (share of the time some
task waited for a core, /proc/pressure/cpu) and ``steal_share`` (the hypervisor's).

Ratios reported: mixup / supervised and cutmix / supervised (target: within 3% of the
plain step), g-ssl / supervised, adversarial / supervised and adversarial g-ssl / g-ssl.
On the CPU the targets use the CPU-time ratio: on a machine shared with other processes
a step's wall time includes its waits for a core (cpu_pressure), its CPU time does not;
on a GPU they use the wall time (CUDA events). PGD-10 runs ten attack forward-backward
passes before the training forward-backward (11 in all), but an attack pass
differentiates with respect to the input only (no weight gradients) and has no
optimizer step, so it costs less than a plain step: the ratio measured is below 11.

timm's ``Mixup`` draws lambda (and the CutMix box) from numpy's global generator and
PGD its random start from torch's: both are seeded once at start.
``--threads`` (default 1, as in the other benches): on a machine shared with other
processes a 2-thread OpenMP region waits for a descheduled thread.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    bench_parser, check_target, header, load_average, print_table, print_targets, summarize, sync, time_interleaved,
    write_json,
)
from gssl_fast.config import ModelConfig, PretextConfig, Recipe, TrainConfig
from gssl_fast.methods.adversarial.config import AdversarialConfig
from gssl_fast.methods.supervised.config import SupervisedConfig
from pipelines.datasets.arrays import CIFAR_MEAN, CIFAR_STD
from pipelines.localizable import TASKS

NUM_CLASSES = 10
THREE = tuple(TASKS)  # ("rotation", "flip", "perm")

# name -> (method config, pretext tasks, the variant it is compared with)
VARIANTS = {
    "supervised": (SupervisedConfig(), (), None),
    "g-ssl": (SupervisedConfig(), THREE, "supervised"),
    "mixup": (SupervisedConfig(mixup_alpha=1.0), (), "supervised"),
    "cutmix": (SupervisedConfig(cutmix_alpha=1.0), (), "supervised"),
    "adversarial": (AdversarialConfig(), (), "supervised"),
    "adversarial g-ssl": (AdversarialConfig(), THREE, "g-ssl"),
}


def build(cfg, tasks, args, accelerator, seed: int = 0):
    """The method of ``cfg`` with ``tasks`` (the trainer's path: recipe, check, build,
    SGD of ``[optim]``, prepare), its prepared model and optimizer."""
    from gssl_fast.methods import MethodContext, build_method
    from gssl_fast.model.optim import build_optimizer

    recipe = dataclasses.replace(Recipe(), model=ModelConfig(backbone=args.backbone),
                                 pretext=PretextConfig(tasks=tuple(tasks)), method=cfg,
                                 train=TrainConfig(batch_size=args.batch, cpu=accelerator.device.type == "cpu"))
    type(cfg).check(recipe, "bench/method_step.py")
    torch.manual_seed(seed)
    method = build_method(cfg, MethodContext.of(recipe, [1] * NUM_CLASSES, CIFAR_MEAN, CIFAR_STD))
    optimizer = build_optimizer(method.parameters_for_optimizer(method.model), recipe.optim)
    model, optimizer = accelerator.prepare(method.model, optimizer)
    return method, model, optimizer


def synthetic_batch(batch: int, side: int, device: torch.device) -> dict:
    """One loader batch: uint8 pixels, labels and every task's target, fixed seed."""
    g = torch.Generator().manual_seed(0)
    out = {"images": torch.randint(0, 256, (batch, 3, side, side), generator=g, dtype=torch.uint8),
           "labels": torch.randint(NUM_CLASSES, (batch,), generator=g)}
    out.update({f"target_{t}": torch.randint(n, (batch,), generator=g) for t, n in TASKS.items()})
    return {k: v.to(device) for k, v in out.items()}


def step_fn(method, model, optimizer, batch: dict, accelerator, device):
    """One training step as ``gssl_fast.train.train_one_epoch`` takes it."""
    model.train()

    def run():
        out = method.training_step(model, {"train": batch}, accelerator=accelerator)
        accelerator.backward(out["loss"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
    return run


def with_cpu_time(fn, cpu: list):
    """``fn`` recording this process's CPU seconds per call into ``cpu``."""
    def run():
        c0 = time.process_time()
        fn()
        cpu.append(time.process_time() - c0)
    return run


def schedule(steps: dict, cheap: set, per_round: int) -> tuple[dict, dict]:
    """The callables handed to ``time_interleaved``: each variant of ``cheap`` ``per_round``
    times under the names ``variant#j`` (so a round times it ``per_round`` times, spread
    over the round), the others once; and their CPU-time lists."""
    fns, cpu = {}, {}
    for j in range(per_round):
        for name in steps:
            if name in cheap or j == 0:
                key = f"{name}#{j}"
                cpu[key] = []
                fns[key] = with_cpu_time(steps[name], cpu[key])
    return fns, cpu


def merge(times: dict, cpu: dict, warmup: int) -> dict:
    """Per variant and clock (``wall``, ``cpu``): every timed run and the median run of
    each round (``variant#j`` keys folded into ``variant``)."""
    out: dict = {}
    for key, t in times.items():
        name = key.rpartition("#")[0]
        for clock, runs in (("wall", t), ("cpu", cpu[key][warmup:])):
            out.setdefault(name, {}).setdefault(clock, []).append(runs)
    return {name: {clock: {"runs": [x for runs in lists for x in runs],
                           "rounds": [statistics.median(r) for r in zip(*lists)]}
                   for clock, lists in clocks.items()}
            for name, clocks in out.items()}


def rows_of(merged: dict, args, on_cpu: bool) -> list[dict]:
    """One row per variant: wall ms (median, quartiles, min..max), CPU ms on the CPU, and
    the ratios to its ``vs`` variant (medians, and the range of the round-by-round ratio)."""
    rows = []
    clocks = ("wall", "cpu") if on_cpu else ("wall",)
    for name, m in merged.items():
        cfg, tasks, vs = VARIANTS[name]
        row = {"variant": name, "method": cfg.name, "tasks": "+".join(tasks) or "-", "vs": vs}
        for clock in clocks:
            t, pre = m[clock]["runs"], "ms" if clock == "wall" else "cpu_ms"
            q1, q3 = quartiles(t)
            row.update({f"{pre}_median": 1e3 * statistics.median(t), f"{pre}_q1": 1e3 * q1, f"{pre}_q3": 1e3 * q3,
                        f"{pre}_min": 1e3 * min(t), f"{pre}_max": 1e3 * max(t)})
            if clock == "wall":
                row.update(summarize(t, args.batch))
            if vs:
                base = merged[vs][clock]
                per_round = [a / b for a, b in zip(m[clock]["rounds"], base["rounds"])]
                x = "x_vs" if clock == "wall" else "x_vs_cpu"
                row.update({x: statistics.median(t) / statistics.median(base["runs"]),
                            f"{x}_round_min": min(per_round), f"{x}_round_max": max(per_round)})
            row[f"{clock}_seconds"] = [round(v, 5) for v in t]
        rows.append(row)
    return rows


def ratio_text(row: dict, x: str, times: bool) -> str:
    """``row[x]`` and its round-by-round range: ``8.61x (rounds ...)`` or ``+1.6% (rounds ...)``."""
    def show(v):
        return f"{v:.2f}x" if times else f"{100 * (v - 1):+.1f}%"
    return f"{show(row[x])} (rounds {show(row[x + '_round_min'])}..{show(row[x + '_round_max'])})"


def quartiles(t: list[float]) -> tuple[float, float]:
    if len(t) < 2:
        return t[0], t[0]
    q = statistics.quantiles(t, n=4)
    return q[0], q[2]


def contention() -> dict:
    """Counters of CPU contention on Linux: the hypervisor's steal (jiffies of /proc/stat)
    and the time runnable tasks waited for a CPU (/proc/pressure/cpu, microseconds)."""
    out = {"time": time.perf_counter()}
    try:
        fields = Path("/proc/stat").read_text().split("\n")[0].split()[1:]
        out["jiffies"], out["steal"] = sum(int(x) for x in fields[:8]), int(fields[7])
    except (OSError, ValueError, IndexError):
        pass
    try:
        some = Path("/proc/pressure/cpu").read_text().split("\n")[0]
        out["cpu_wait_us"] = int(some.rpartition("total=")[2])
    except (OSError, ValueError):
        pass
    return out


def contention_between(before: dict, after: dict) -> dict:
    """steal_share: share of the machine's CPU time taken by the hypervisor;
    cpu_pressure: share of the wall time in which some task waited for a CPU (a busy
    machine: the wall time of a step then includes waiting, its CPU time does not)."""
    out = {}
    if "steal" in before and "steal" in after:
        out["steal_share"] = round((after["steal"] - before["steal"]) / max(after["jiffies"] - before["jiffies"], 1), 3)
    if "cpu_wait_us" in before and "cpu_wait_us" in after:
        wall_us = 1e6 * (after["time"] - before["time"])
        out["cpu_pressure"] = round((after["cpu_wait_us"] - before["cpu_wait_us"]) / max(wall_us, 1), 3)
    return out


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--backbone", default="resnet20_cifar", help="timm name (resnet32_cifar: the papers' LT model)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds of timed steps")
    p.add_argument("--cheap-per-round", type=int, default=3,
                   help="timed steps per round of each variant without PGD (the PGD ones: 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    args = p.parse_args(argv)
    if args.quick:
        args.backbone, args.batch, args.rounds, args.cheap_per_round = "resnet8_cifar", 32, 2, 2
    torch.set_num_threads(args.threads)
    np.random.seed(0)  # timm's Mixup: lambda and the CutMix box come from numpy's global generator
    torch.manual_seed(0)  # PGD's random start

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=torch.device(args.device).type == "cpu")
    device = accelerator.device
    batch = synthetic_batch(args.batch, args.side, device)
    steps = {name: step_fn(*build(cfg, tasks, args, accelerator), batch, accelerator, device)
             for name, (cfg, tasks, _) in VARIANTS.items()}
    cheap = {name for name, (cfg, _, _) in VARIANTS.items() if cfg.name != "adversarial"}
    fns, cpu = schedule(steps, cheap, args.cheap_per_round)

    load_before, before = load_average(), contention()
    times = time_interleaved(fns, repeats=args.rounds, warmup=args.warmup, device=device)
    after = contention()
    on_cpu = device.type == "cpu"
    rows = rows_of(merge(times, cpu, args.warmup), args, on_cpu)

    pgd_steps = VARIANTS["adversarial"][0].steps
    info = {**header(), "load_avg_1min_before": load_before, "load_avg_1min_after": load_average(),
            **contention_between(before, after), "backbone": args.backbone, "batch": args.batch, "side": args.side,
            "pgd_steps": pgd_steps, "rounds": args.rounds, "cheap_per_round": args.cheap_per_round,
            "timed_wall_s": round(after["time"] - before["time"], 1)}
    cols = ["variant", "tasks", "ms_median", "ms_min", "ms_max", "items_per_s", "cpu_ms_median", "cpu_ms_min",
            "cpu_ms_max", "vs", "x_vs", "x_vs_cpu", "x_vs_cpu_round_min", "x_vs_cpu_round_max"]
    print_table("training step per method variant (ms per step; x_vs: median step time over the vs variant's)",
                info, rows, [c for c in cols if on_cpu or "cpu" not in c])
    # The targets use the CPU time on the CPU (the wall time of a step on a busy machine
    # includes its waits for a core: see cpu_pressure), the wall time on a GPU.
    x = "x_vs_cpu" if on_cpu else "x_vs"
    clock = "CPU time" if on_cpu else "wall time"
    by = {r["variant"]: r for r in rows}
    for name in ("mixup", "cutmix", "g-ssl", "adversarial", "adversarial g-ssl"):
        r, pgd_ = by[name], name.startswith("adversarial")
        line = f"# {name} / {r['vs']} ({clock}): {ratio_text(r, x, pgd_)}"
        if on_cpu:
            line += f"; wall time {ratio_text(r, 'x_vs', pgd_)}"
        if pgd_:
            line += f"; PGD-{pgd_steps} + the training pass = {pgd_steps + 1} forward-backward passes"
        print(line)
    targets = [check_target(f"{name} step overhead vs supervised ({clock})", by[name][x] - 1, 0.03, at_least=False)
               for name in ("mixup", "cutmix")]
    print_targets(targets)
    write_json(args.json, "method_step", {**info, "targets": targets}, rows)


if __name__ == "__main__":
    main()
