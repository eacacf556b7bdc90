"""kill -9 at many points of a run, then ``--resume auto``: does every run end bit-identical
to an unbroken one with the same seed?

    python -m bench.crash_points [--json out.json] [--quick]

A tiny supervised G-SSL run (the built-in data at 16x16, ResNet-8, 3 epochs of 4 steps)
is trained once unbroken, then once per point with ``GSSL_FAST_CRASH_AT=point:n``
(``gssl_fast.faults``: the process kills itself with SIGKILL at the n-th passage) and
resumed. Points: the loaders just built, after each of the 12 optimizer steps, inside
each of the 3 evaluations, and with each of the 3 checkpoints written but not renamed:
19 in all (``--quick``: 1). A row is good when the killed run died by SIGKILL, the resume
exited 0, and the final weights and every metrics.jsonl row (timings aside) equal the
unbroken run's. ``tests/gssl_fast/test_crashes.py`` drives some of these points (and one
between the stages of G-SimCLR) in the test suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import bench_parser, header, print_table, write_json

ROOT = Path(__file__).resolve().parent.parent

ARGS = ["--set", "train.epochs=3", "--set", "train.steps_per_epoch=4"]
POINTS = [("data", 1), *(("step", n) for n in range(1, 13)), *(("evaluate", n) for n in (1, 2, 3)),
          *(("checkpoint", n) for n in (1, 2, 3))]
QUICK = [("checkpoint", 1)]  # the script works; tests/gssl_fast/test_crashes.py covers more


def train(recipe: Path, out: Path, *extra: str, crash: str | None = None, processes: int = 1,
          port: int = 29560, signal: str = "KILL") -> subprocess.CompletedProcess:
    """``python -m gssl_fast.train`` in a fresh process (``processes`` > 1: that many CPU
    processes under torchrun, on ``port``), sent ``SIG<signal>`` at ``crash`` when given."""
    env = {k: v for k, v in os.environ.items() if k not in ("GSSL_FAST_CRASH_AT", "GSSL_FAST_CRASH_SIGNAL")}
    if crash:
        env["GSSL_FAST_CRASH_AT"], env["GSSL_FAST_CRASH_SIGNAL"] = crash, signal
    launch = [sys.executable]
    if processes > 1:
        launch = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(processes),
                  "--master_port", str(port)]
    return subprocess.run([*launch, "-m", "gssl_fast.train", str(recipe), "--out", str(out), *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**env, "PYTHONUNBUFFERED": "1"})


def final(run: Path) -> tuple[dict, list]:
    """The newest checkpoint's weights and the metrics.jsonl rows without timings."""
    found = sorted((run / "checkpoints").glob("epoch_*.pt"))  # none in a staged run's own folder
    state = torch.load(found[-1], weights_only=True) if found else {"model": {}}
    log = run / "metrics.jsonl"  # a stage's folder has none: its rows are in the run's
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return state["model"], [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]


def same(a: tuple[dict, list], b: tuple[dict, list]) -> bool:
    return a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[1] == b[1]


def crash_and_resume(recipe: Path, out: Path, args: list[str], point: str) -> dict:
    """Kills a run at ``point`` ("name:n"), resumes it; the outcome of each part."""
    t0 = time.perf_counter()
    killed = train(recipe, out, *args, crash=point)
    resumed = train(recipe, out, *args, "--resume", "auto")
    return {"point": point, "killed_by_sigkill": killed.returncode == -9, "resume_status": resumed.returncode,
            "stale_temp_files": len(list((out / "checkpoints").glob(".*.tmp"))) if (out / "checkpoints").is_dir() else 0,
            "seconds": round(time.perf_counter() - t0, 1), "stderr": resumed.stderr[-300:] if resumed.returncode else ""}


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    args = p.parse_args(argv)
    from tests.gssl_fast.tiny import write_tiny

    points = QUICK if args.quick else POINTS
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe = write_tiny(tmp)
        assert train(recipe, tmp / "straight", *ARGS).returncode == 0
        reference = final(tmp / "straight")
        for name, n in points:
            out = tmp / f"{name}-{n}"
            row = crash_and_resume(recipe, out, ARGS, f"{name}:{n}")
            row["identical"] = row["killed_by_sigkill"] and row["resume_status"] == 0 and same(final(out), reference)
            rows.append(row)
            print(row, flush=True)
    good = sum(r["identical"] for r in rows)
    info = {**header(), "points": len(rows), "identical": good}
    print_table("crash points: kill -9, then --resume auto", info, rows,
                ["point", "killed_by_sigkill", "resume_status", "stale_temp_files", "identical", "seconds"])
    print(f"# {good} of {len(rows)} killed runs resumed to the unbroken run's weights and metrics")
    write_json(args.json, "crash_points", info, rows)


if __name__ == "__main__":
    main()
