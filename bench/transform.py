"""Localizable transform throughput of each backend on uint8 batches, beside the memory
ceiling (a plain copy of the same batch) and the authors' per-sample loop.

    python -m bench.transform [--device cuda] [--threads 1] [--json out.json] [--quick]

Rows per image side (batch 256 by default), the same images and parameters for all:
- copy (ceiling): ``x.clone()`` of the ``[B, 3, H, W]`` uint8 batch
- torch batched: ``pipelines.localizable.apply_localizable`` (one gather, one scatter)
- per-sample loop: ``pipelines.localizable.reference_localizable`` (the authors' loop)
- dali: a DALI pipeline doing only ``pipelines.dali.graph.localizable_step`` on an
  ``external_source`` ``[B, H, W, 3]`` uint8 batch (its native layout), with the same
  parameters packed into codes; the output handed over as a torch tensor
- ffcv op: ``pipelines.ffcv.ops``' numba kernel called directly on ``[B, H, W, 3]``
  uint8 into a preallocated buffer (always on the CPU)

Each row: images/s (median of interleaved repeated runs of ``--calls`` batches after
warm-up, with min..max), ``x_vs_loop``, and the torch operators dispatched per batch
(``ops``; n/a for DALI and FFCV, which are not torch). ``ops_quarter_batch`` is the count at a quarter of the
batch: equal counts mean the cost in launches does not grow with the batch.
``--threads`` sets torch's, DALI's and numba's threads alike (the target is for 1).

Target (issue 5): torch batched >= 3x the per-sample loop at 256 x 64x64, one thread,
with a constant operator count.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.common import (
    bench_parser, check_target, count_ops, header, load_average, print_table, print_targets, summarize,
    time_interleaved, write_json,
)
from pipelines.localizable import PARAM_KEYS, TASKS, apply_localizable, draw_localizable, reference_localizable


def dali_impl(x_hwc: np.ndarray, params: dict, device: torch.device, threads: int):
    """A callable running one batch through a DALI pipeline that applies only the
    localizable transform; returns the ``[B, H, W, 3]`` uint8 result as a torch tensor."""
    from pipelines.dali.graph import code_fields, import_dali, localizable_step, localizable_tables
    from pipelines.dali.loader import _to_torch

    fn, _, pipeline_def = import_dali()
    b, side = x_hwc.shape[0], x_hwc.shape[1]
    fields = code_fields(tuple(TASKS), mirror=False)  # hflip has one value: codes are (q, f, k, p)
    tables = localizable_tables(side, fields, "horizontal")
    q, f, k, p = (params[n].numpy() for n in PARAM_KEYS)
    codes = (((q * fields["flip"] + f) * fields["rotation"] + k) * fields["perm"] + p).astype(np.int32)
    gpu = device.type == "cuda"

    @pipeline_def(batch_size=b, num_threads=threads, device_id=torch.cuda.current_device() if gpu else None,
                  exec_pipelined=False, exec_async=False, prefetch_queue_depth=1)
    def transform_only():
        images, code = fn.external_source(source=lambda: (x_hwc, codes), num_outputs=2, batch=True,
                                          layout=["HWC", ""])
        return localizable_step(images.gpu() if gpu else images, code, tables, side)

    pipe = transform_only()
    pipe.build()
    return lambda: _to_torch(pipe.run()[0], device)


def ffcv_impl(x_hwc: np.ndarray, params: dict, threads: int):
    """A callable running ``pipelines.ffcv.ops``' localizable kernel on the batch."""
    import numba

    from pipelines.ffcv.ops import _PERMS, _localizable_kernel

    numba.set_num_threads(threads)
    table = np.stack([params[n].numpy() for n in PARAM_KEYS], axis=1).astype(np.int64)  # [B, 4]
    dst = np.empty_like(x_hwc)
    return lambda: _localizable_kernel(x_hwc, dst, table, False, _PERMS)


def repeat(fn, calls: int):
    def run():
        for _ in range(calls):
            fn()
    return run


def rows_for(side: int, batch: int, device: torch.device, args) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, side, side), generator=g, dtype=torch.uint8)
    params = {k: v for k, v in draw_localizable(batch, generator=g).items() if k in PARAM_KEYS}
    x_hwc = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
    xd, pd = x.to(device), {k: v.to(device) for k, v in params.items()}
    impls = {
        "copy (ceiling)": lambda: xd.clone(),
        "torch batched": lambda: apply_localizable(xd, **pd),
        "per-sample loop": lambda: reference_localizable(xd, **pd),
    }
    if "dali" in args.backends:
        impls["dali"] = dali_impl(x_hwc, params, device, args.threads)
    if "ffcv" in args.backends:
        impls["ffcv op"] = ffcv_impl(x_hwc, params, args.threads)
    # Each backend must produce the reference pixels, or its speed means nothing.
    want = apply_localizable(x, **params).permute(0, 2, 3, 1).numpy()
    for name in ("dali", "ffcv op"):
        if name in impls:
            got = impls[name]()
            got = got.cpu().numpy() if isinstance(got, torch.Tensor) else got
            assert np.array_equal(got, want), f"{name} differs from apply_localizable"
    # A timed run is --calls batches: a single 64px batch takes milliseconds, short
    # enough for one scheduler hiccup on a shared machine to move the median.
    runs = {name: repeat(fn, args.calls) for name, fn in impls.items()}
    times = time_interleaved(runs, repeats=args.repeats, warmup=2, device=device, devices={"ffcv op": "cpu"})
    xq, pq = xd[: batch // 4].clone(), {k: v[: batch // 4].clone() for k, v in pd.items()}
    ops = {"copy (ceiling)": (count_ops(impls["copy (ceiling)"]), count_ops(lambda: xq.clone())),
           "torch batched": (count_ops(impls["torch batched"]), count_ops(lambda: apply_localizable(xq, **pq))),
           "per-sample loop": (count_ops(impls["per-sample loop"]),
                               count_ops(lambda: reference_localizable(xq, **pq)))}
    rows = []
    for name in impls:
        n_ops = ops.get(name, ("n/a", "n/a"))
        where = "cpu" if name == "ffcv op" else device.type
        rows.append({"impl": name, "side": side, "batch": batch, "device": where, "threads": args.threads,
                     "ops": n_ops[0], "ops_quarter_batch": n_ops[1], **summarize(times[name], batch * args.calls)})
    loop = next(r for r in rows if r["impl"] == "per-sample loop")["items_per_s"]
    for r in rows:
        r["x_vs_loop"] = r["items_per_s"] / loop
    return rows


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--threads", type=int, default=1, help="torch, DALI and numba threads (the target is for 1)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--repeats", type=int, default=9, help="interleaved timed runs per row")
    p.add_argument("--calls", type=int, default=4, help="batches per timed run")
    p.add_argument("--backends", nargs="*", default=["dali", "ffcv"], choices=["dali", "ffcv"],
                   help="optional backends to add beside torch")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.sizes, args.calls = 3, [32], 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = load_average()
    rows = [r for side in args.sizes for r in rows_for(side, args.batch, device, args)]
    torch.set_num_threads(args.threads)  # importing ffcv resets it
    info = {**header(), "load_avg_1min_before": load_before}
    cols = ["impl", "side", "batch", "device", "items_per_s", "items_per_s_min", "items_per_s_max", "x_vs_loop",
            "ops", "ops_quarter_batch"]
    print_table("localizable transform (images/s)", info, rows, cols)
    targets = []
    big = [r for r in rows if r["side"] == max(args.sizes)]
    torch_row = next(r for r in big if r["impl"] == "torch batched")
    targets.append(check_target(f"torch batched / per-sample loop, {args.batch} x {torch_row['side']}px, "
                                f"{args.threads} thread(s)", torch_row["x_vs_loop"], 3.0))
    targets.append(check_target("torch batched ops, quarter batch / full batch (constant = 1)",
                                torch_row["ops_quarter_batch"] / torch_row["ops"], 1.0))
    targets[-1]["met"] = torch_row["ops_quarter_batch"] == torch_row["ops"]
    print_targets(targets)
    write_json(args.json, "transform", {**info, "targets": targets}, rows)


if __name__ == "__main__":
    main()
