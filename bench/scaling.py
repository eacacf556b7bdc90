"""How training images/s grows with the batch size, the image size and the number of
processes (the project's torch pipeline feeding a G-SSL training step).

    python -m bench.scaling [--backbone resnet20_cifar] [--batches 64 128 256 512] [--json out.json] [--quick]

Part 1, one process: each timed run takes the next batch of ``pipelines.torch``
(random uint8 images in memory, crop, flip, the quadrant transform, normalization)
and does one G-SSL step (three gated tasks, SGD) on it; images/s (median of
interleaved repeats after warm-up, min..max).
- batch size: ``--batches`` at ``--side`` (32) pixels
- image size: ``--sides`` at ``--side-batch`` images per batch
Part 2, processes: ``torchrun --nproc_per_node N -m gssl_fast.train`` on a shapes
recipe of the same model, for each N of ``--procs``, the global batch kept at
``--proc-batch`` (``train.batch_size`` = global / N), ``--threads`` torch threads per
process; ``images_per_s`` of metrics.jsonl (all processes together; median over epochs
after the first). Processes are not interleaved (each is a separate run).

``--threads`` (default 1): on a machine shared with other processes, a 2-thread
OpenMP region waits for a descheduled thread (see bench/train_step.py).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench._loaders import endless
from bench.common import (
    bench_parser, header, load_average, print_table, summarize, sync, time_interleaved, write_json,
)
from bench.train_step import build
from pipelines.localizable import TASKS

ROOT = Path(__file__).resolve().parent.parent


def loader_step(backbone: str, batch: int, side: int, device: torch.device):
    """A callable: next batch of pipelines.torch, one G-SSL training step on it."""
    from pipelines.torch import make_loader

    rng = np.random.default_rng(0)
    n = 2 * batch
    images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    batches = endless(make_loader((images, labels), batch_size=batch, drop_last=True, device=device))
    task, optimizer = build(backbone, tuple(TASKS), device)

    def run():
        b = next(batches)
        out = task(b["images"], b["labels"], {f"target_{t}": b[f"target_{t}"] for t in TASKS})
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
    return run


def part_sizes(args, device) -> list[dict]:
    cases = [("batch size", b, args.side) for b in args.batches]
    cases += [("image size", args.side_batch, s) for s in args.sides]
    fns = {case: loader_step(args.backbone, case[1], case[2], device) for case in cases}
    times = time_interleaved(fns, repeats=args.repeats, warmup=1, device=device)
    rows = []
    for (axis, batch, side), t in times.items():
        rows.append({"axis": axis, "batch": batch, "side": side, "processes": 1, **summarize(t, batch)})
    for axis in ("batch size", "image size"):
        first = next(r for r in rows if r["axis"] == axis)
        for r in rows:
            if r["axis"] == axis:
                r["x_vs_first"] = r["items_per_s"] / first["items_per_s"]
    return rows


def free_port() -> int:
    """A TCP port nobody listens on now (other runs on a shared machine use the default one)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_trainer(n: int, args, device, tmp: Path) -> list[float]:
    """images_per_s of every epoch of a ``torchrun`` run with ``n`` processes."""
    recipe = tmp / f"scaling_{n}.toml"
    recipe.write_text(
        f'[data]\nname = "shapes"\nimage_size = {args.side}\ntrain_size = {args.proc_steps * args.proc_batch}\n'
        f'val_size = {args.proc_batch}\n[model]\nbackbone = "{args.backbone}"\n'
        '[pretext]\ntasks = ["rotation", "flip", "perm"]\n'
        f'[train]\nepochs = {args.proc_epochs}\nbatch_size = {args.proc_batch // n}\nnum_threads = {args.threads}\n'
        f'eval_batch_size = {args.proc_batch // n}\ncpu = {"true" if device.type == "cpu" else "false"}\n'
        'keep_checkpoints = 1\n')
    run_dir = tmp / f"run_{n}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
           str(free_port()), "-m", "gssl_fast.train", str(recipe), "--out", str(run_dir), "--overwrite"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [e["images_per_s"] for e in epochs]


def part_processes(args, device) -> list[dict]:
    rows = []
    procs = args.procs
    if device.type == "cuda":  # one GPU per process
        procs = [n for n in procs if n <= torch.cuda.device_count()]
        if procs != args.procs:
            print(f"# processes: skipping {sorted(set(args.procs) - set(procs))}: "
                  f"{torch.cuda.device_count()} GPU(s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in procs:
            rates = run_trainer(n, args, device, Path(tmp))
            rates = rates[1:] or rates
            rows.append({"axis": "processes", "batch": args.proc_batch, "side": args.side, "processes": n,
                         "items_per_s": statistics.median(rates), "items_per_s_min": min(rates),
                         "items_per_s_max": max(rates), "repeats": len(rates)})
    for r in rows:
        r["x_vs_first"] = r["items_per_s"] / rows[0]["items_per_s"]
    return rows


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--backbone", default="resnet20_cifar")
    p.add_argument("--threads", type=int, default=1, help="torch threads (per process in part 2)")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--sides", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--side-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--procs", type=int, nargs="*", default=[1, 2], help="process counts of part 2 (none: skip)")
    p.add_argument("--proc-batch", type=int, default=128, help="global batch of part 2")
    p.add_argument("--proc-steps", type=int, default=4, help="steps per epoch of part 2")
    p.add_argument("--proc-epochs", type=int, default=3)
    args = p.parse_args(argv)
    if args.quick:
        args.backbone, args.batches, args.sides, args.side_batch = "resnet8_cifar", [16, 32], [32, 64], 16
        args.repeats = 2
        args.procs, args.proc_batch, args.proc_steps, args.proc_epochs = [2], 32, 2, 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = load_average()
    rows = part_sizes(args, device) + (part_processes(args, device) if args.procs else [])
    info = {**header(), "load_avg_1min_before": load_before, "backbone": args.backbone,
            "tasks": "rotation, flip, perm (gated)"}
    cols = ["axis", "batch", "side", "processes", "items_per_s", "items_per_s_min", "items_per_s_max", "x_vs_first"]
    print_table("scaling of loader + training step (images/s)", info, rows, cols)
    write_json(args.json, "scaling", info, rows)


if __name__ == "__main__":
    main()
