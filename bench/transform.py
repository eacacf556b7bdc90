"""Localizable transform throughput: batched torch ops vs the authors' per-sample loop,
beside the memory ceiling (a plain copy of the same batch).

    python bench/transform.py [--device cuda] [--threads 1] [--json out.json]

Each row: images/s (median of repeated runs after warm-up, with min..max) and the
number of torch operators dispatched per batch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import count_ops, header, print_table, summarize, time_runs, write_json  # noqa: E402
from gssl_fast.pretext import PARAM_KEYS, apply_localizable, draw_localizable, reference_localizable  # noqa: E402


def rows_for(side: int, batch: int, device: torch.device, repeats: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, side, side), generator=g, dtype=torch.uint8).to(device)
    params = {k: v.to(device) for k, v in draw_localizable(batch, generator=g).items() if k in PARAM_KEYS}
    impls = {
        "copy (ceiling)": lambda: x.clone(),
        "torch batched": lambda: apply_localizable(x, **params),
        "per-sample loop": lambda: reference_localizable(x, **params),
    }
    rows = []
    for name, fn in impls.items():
        stats = summarize(time_runs(fn, repeats=repeats, device=device), batch)
        rows.append({"impl": name, "side": side, "batch": batch, "ops": count_ops(fn), **stats})
    loop = next(r for r in rows if r["impl"] == "per-sample loop")["items_per_s"]
    for r in rows:
        r["x_vs_loop"] = r["items_per_s"] / loop
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the target is stated for 1)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [r for side in args.sizes for r in rows_for(side, args.batch, device, args.repeats)]
    info = header()
    cols = ["impl", "side", "batch", "items_per_s", "items_per_s_min", "items_per_s_max", "ops", "x_vs_loop"]
    print_table("localizable transform (images/s)", info, rows, cols)
    write_json(args.json, "transform", info, rows)


if __name__ == "__main__":
    main()
