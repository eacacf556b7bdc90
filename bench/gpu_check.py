"""The GPU check: CUDA-only tests and a short GPU benchmark in one command, under 8 minutes.

    make gpu-check OUT=bench/out/gpu      (= python -m bench.gpu_check --out DIR)

Where CUDA is present it runs, each as a subprocess with its own time limit:
1. the tests that take the CUDA path when a GPU is there: the loader contract on every
   backend (DALI's GPU graph, the GPU-resident torch loader, FFCV to the device), DALI's
   GPU-only cases, a bf16 step of each method and the adversarial step
   (tests/gssl_fast/methods/test_gpu.py);
2. the benchmarks: the batched transform at 64x64, DALI against torchvision on a 64x64
   JPEG folder, the loaders on CIFAR-sized data, the step of each method with
   ResNet-18 at 64x64 (supervised, G-SSL, MixUp, CutMix, adversarial), and the streams
   at 224 px (DALI's "mixed" decode on the GPU) against torchvision's ImageFolder.
It writes each benchmark's JSON and ``summary.json`` (device, versions, the tests'
closing line, each part's seconds, loader throughput against model throughput) into
DIR. Without CUDA it says so, writes ``summary.json`` with ``"cuda": false`` and exits 3.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA_EXIT = 3

TESTS = ["tests/pipelines/test_loaders.py", "tests/pipelines/test_localizable.py", "tests/pipelines/test_dali.py",
         "tests/pipelines/test_stream.py", "tests/gssl_fast/methods/test_gpu.py", "tests/gssl_fast/model/test_attacks.py"]
# name -> (command after `python`, time limit in seconds)
BENCHES = {
    "transform": (["-m", "bench.transform", "--device", "cuda", "--sizes", "64", "--repeats", "5"], 90),
    "dali_loader": (["-m", "bench.dali_loader", "--images", "2000", "--rounds", "2"], 120),
    "loaders": (["-m", "bench.loaders", "--data", "cifar", "--rounds", "1", "--device", "cuda"], 120),
    "method_step": (["-m", "bench.method_step", "--device", "cuda", "--backbone", "resnet18_cifar", "--side", "64",
                     "--batch", "128", "--rounds", "3"], 150),
    "stream": (["-m", "bench.stream", "--device", "cuda", "--images", "1000", "--workers", "8", "--rounds", "2",
                "--no-memory"], 150),
}


def run(cmd: list[str], limit: float) -> dict:
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=limit)
        rc, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 124, f"timed out after {limit} s\n{(e.stdout or b'')[-2000:]!r}"
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - start, 1),
            "tail": out.strip().splitlines()[-12:]}


def loader_vs_model(out: Path) -> dict:
    """Images/s of the fastest loader at 64x64 (DALI) against the supervised ResNet-18 step."""
    try:
        loaders = json.loads((out / "dali_loader.json").read_text())["rows"]
        steps = json.loads((out / "method_step.json").read_text())["rows"]
    except (OSError, KeyError, ValueError):
        return {}
    loader = max(r.get("items_per_s", 0) for r in loaders)
    model = next((r["items_per_s"] for r in steps if r.get("variant") == "supervised"), 0)
    return {"loader_images_per_s": loader, "model_images_per_s": model,
            "loader_over_model": loader / model if model else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the JSON files")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"cuda": torch.cuda.is_available(), "torch": torch.__version__}
    if not summary["cuda"]:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print("gpu-check: no CUDA device here; nothing to check (exit 3)", file=sys.stderr)
        return NO_CUDA_EXIT
    summary["device"] = torch.cuda.get_device_name(0)
    summary["tests"] = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], 180)
    print("tests:", summary["tests"]["tail"][-1] if summary["tests"]["tail"] else summary["tests"]["rc"], flush=True)
    summary["benches"] = {}
    for name, (cmd, limit) in BENCHES.items():
        summary["benches"][name] = result = run([*cmd, "--json", str(out / f"{name}.json")], limit)
        print(f"{name}: rc {result['rc']} in {result['seconds']} s", flush=True)
    summary["loader_vs_model"] = loader_vs_model(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    failed = [k for k, v in {"tests": summary["tests"], **summary["benches"]}.items() if v["rc"]]
    print(f"gpu-check: {'all passed' if not failed else 'failed: ' + ', '.join(failed)}; JSON in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
