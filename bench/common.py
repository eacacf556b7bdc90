"""Shared benchmark plumbing: the hardware/version header, timing with warm-up and
repeats (CUDA events on a GPU), operator counting, tables and JSON rows."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from pipelines.system import usable_cores


def header() -> dict:
    """Machine, device and versions, printed above every table and stored in the JSON."""
    info = {
        "machine": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    for name in ("torchvision", "timm", "accelerate", "nvidia.dali", "ffcv", "numpy"):
        try:
            info[name] = __import__(name, fromlist=["__version__"]).__version__
        except Exception:
            pass
    return info


def time_runs(fn, *, repeats: int = 7, warmup: int = 2, device: torch.device | str = "cpu") -> list[float]:
    """Seconds per call of ``fn`` over ``repeats`` runs after ``warmup`` untimed ones."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def summarize(times: list[float], items: int) -> dict:
    """Median items/s and the spread (min..max items/s) of a list of timings."""
    med = statistics.median(times)
    return {
        "seconds_median": med,
        "items_per_s": items / med,
        "items_per_s_min": items / max(times),
        "items_per_s_max": items / min(times),
        "repeats": len(times),
    }


def count_ops(fn) -> int:
    """Number of torch operators ``fn`` dispatches (each one a kernel launch on CUDA)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.n += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        fn()
    return Counter.n


def print_table(title: str, info: dict, rows: list[dict], columns: list[str]) -> None:
    print(f"# {title}")
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()))
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"
    return "" if v is None else str(v)


def write_json(path: str | None, title: str, info: dict, rows: list[dict]) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"benchmark": title, "header": info, "rows": rows}, indent=2) + "\n")


# ---------------------------------------------------------------- added for the bench suite


def time_interleaved(fns: dict, *, repeats: int = 7, warmup: int = 2, device: torch.device | str = "cpu",
                     devices: dict | None = None) -> dict[str, list[float]]:
    """Seconds per call of each of ``fns`` (name -> callable), the variants alternating:
    round ``i`` times each once, in an order rotated by ``i``, so a change of load on a
    shared machine falls on every variant instead of on one. Warm-up calls of every
    variant come first and are not timed. ``devices`` (name -> device) overrides
    ``device`` for the variants that run elsewhere (a CPU kernel in a CUDA run)."""
    names = list(fns)
    where = {name: (devices or {}).get(name, device) for name in names}
    for name in names:
        time_runs(fns[name], repeats=0, warmup=warmup, device=where[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:
            times[name] += time_runs(fns[name], repeats=1, warmup=0, device=where[name])
    return times


def check_target(name: str, value: float, goal: float, *, at_least: bool = True) -> dict:
    """One target of the issue: ``value`` against ``goal`` (``>=`` or ``<=``)."""
    met = value >= goal if at_least else value <= goal
    return {"target": name, "value": value, "goal": f"{'>=' if at_least else '<='} {goal:g}", "met": bool(met)}


def print_targets(targets: list[dict]) -> None:
    for t in targets:
        print(f"# target {t['target']}: {t['value']:.3g} ({t['goal']}) {'met' if t['met'] else 'MISSED'}")


def bench_parser(doc: str):
    """An argument parser with the options every script shares: ``--json PATH`` (write the
    rows), ``--quick`` (a smoke run of a few seconds: small sizes, few repeats) and ``--device``."""
    import argparse

    p = argparse.ArgumentParser(description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=None, metavar="PATH", help="write the header and rows as JSON")
    p.add_argument("--quick", action="store_true", help="smoke mode: small sizes, few repeats")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def sync(device: torch.device | str) -> None:
    """Waits for queued device work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def load_average() -> float | None:
    """The machine's 1-minute load average (other processes skew every row), or None."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None
