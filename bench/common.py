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


def header() -> dict:
    """Machine, device and versions, printed above every table and stored in the JSON."""
    info = {
        "machine": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
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
