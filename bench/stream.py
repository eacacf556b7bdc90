"""Streaming a JPEG folder: memory that stays flat as the dataset grows, and throughput at
equal cores against the usual peers.

    python -m bench.stream [--images 2000] [--workers 2] [--batch 64] [--device cuda] [--no-memory]
                           [--json out.json] [--quick]

An ImageNet-style tree of photo-like JPEGs of 200-500 px (``write_imagenet_style``) is
written to a temporary folder. Every loader delivers ``[B, 3, 224, 224]`` uint8 batches
of a random-resized crop (scale 0.08-1) and a flip.

memory: peak proportional set size (PSS: the process and its workers, shared pages counted
once; sampled every 20 ms) of one epoch over N
and 4N images, each in a fresh process: the project's torch stream against the in-memory
path (the folder decoded whole at 224, then the torch loader). Target: the stream's 4N
peak within 10 % of its N peak.

throughput (images/s, steady state, one loader alive at a time, in interleaved rounds):
- ``decode_ceiling``: PIL decoding each file at full size in the workers, nothing else;
- ``torchvision``: ``ImageFolder`` + ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip``
  + ``PILToTensor`` + ``DataLoader`` (the usual peer);
- ``timm``: ``timm.data.create_loader`` (its RandomResizedCrop train transform, no
  prefetcher), where timm installs;
- ``torch_stream``: this project's stream (crop at decode, flip batched); and
  ``torch_stream_localizable`` with the localizable transform (rotation, flip, perm) on;
- ``dali_stream``, ``ffcv_stream``: the DALI and FFCV streams where this version has them.
Each row: images/s (median, min..max), ``x_torchvision``, ``of_ceiling``. Targets: the torch
stream >= 2x torchvision; the localizable transform < 5 % of the stream's time. The
project's loaders deliver on ``--device`` (on a GPU: DALI decodes with "mixed", the
views run there); the peers' batches stay on the CPU.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench._loaders import time_loaders_in_rounds
from bench.common import bench_parser, check_target, header, load_average, print_table, print_targets, write_json

SIDE = 224
CLASSES = 10
ROOT = Path(__file__).resolve().parent.parent


def write_tree(root: Path, n: int, seed: int = 0) -> Path:
    from pipelines.datasets.testing import write_imagenet_style

    return write_imagenet_style(root, (max(n // CLASSES, 1), 1), CLASSES, sizes=(200, 500), seed=seed)


class DecodeOnly(torch.utils.data.Dataset):
    """The ceiling: each file decoded at full size by PIL, returned as a tiny tensor."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im.convert("RGB").load()
        return torch.zeros(1)


def peer_loader(dataset, batch: int, workers: int):
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0, prefetch_factor=2 if workers else None)


def makers(root: Path, batch: int, workers: int, device: str = "cpu") -> dict:
    """name -> factory of a loader over ``root/train`` (one alive at a time)."""
    from torchvision import datasets, transforms as T

    from pipelines import make_loader
    from pipelines.datasets import list_folder
    from pipelines.stream import Decode, StreamSource

    files = list_folder(root, "train")
    peer = T.Compose([T.RandomResizedCrop(SIDE), T.RandomHorizontalFlip(), T.PILToTensor()])

    def ours(tasks):
        source = StreamSource(files, Decode("random_resized"))
        return lambda: make_loader(source, batch_size=batch, image_size=SIDE, crop_padding=0, tasks=tasks,
                                   normalize=False, device=device, num_workers=workers, drop_last=True)

    out = {
        "decode_ceiling": lambda: peer_loader(DecodeOnly(files.paths), batch, workers),
        "torchvision": lambda: peer_loader(datasets.ImageFolder(str(root / "train"), transform=peer), batch, workers),
        "torch_stream": ours(()),
        "torch_stream_localizable": ours(("rotation", "flip", "perm")),
    }
    try:
        from timm.data import create_loader, create_dataset

        def timm_loader():
            ds = create_dataset("", root=str(root / "train"), split="train", is_training=True)
            return create_loader(ds, input_size=(3, SIDE, SIDE), batch_size=batch, is_training=True,
                                 use_prefetcher=False, num_workers=workers, persistent_workers=workers > 0,
                                 hflip=0.5, color_jitter=None, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))

        out["timm"] = timm_loader
    except ImportError:
        pass
    out.update(other_streams(files, batch, workers, device))
    return out


def other_streams(files, batch: int, workers: int, device: str) -> dict:
    """The DALI and FFCV streams, where this version of the project and the machine have them."""
    from pipelines import make_loader
    from pipelines.stream import Decode, StreamSource

    source = StreamSource(files, Decode("random_resized"))
    out = {}
    for backend, option in (("dali", "num_threads"), ("ffcv", "num_workers")):
        def make(backend=backend, option=option):
            return make_loader(source, backend=backend, batch_size=batch, image_size=SIDE, crop_padding=0, tasks=(),
                               normalize=False, device=device, drop_last=True, **{option: workers})
        try:
            next(iter(make()))
        except Exception as e:  # not streamed by this backend (yet), or not installed here
            print(f"# {backend}_stream left out: {type(e).__name__}: {str(e)[:160]}")
            continue
        out[f"{backend}_stream"] = make
    return out


def throughput(root: Path, args) -> list[dict]:
    loaders = makers(root, args.batch, args.workers, args.device)
    timed = time_loaders_in_rounds(loaders, rounds=args.rounds, batches=args.batches, repeats=2, warmup=1)
    rows = []
    for name, t in timed.items():
        med = statistics.median(t["wall"])
        rows.append({"loader": name, "images_per_s": args.batches * args.batch / med,
                     "images_per_s_min": args.batches * args.batch / max(t["wall"]),
                     "images_per_s_max": args.batches * args.batch / min(t["wall"]),
                     "start_s": statistics.median(t["start"])})
    by = {r["loader"]: r["images_per_s"] for r in rows}
    for r in rows:
        r["x_torchvision"] = r["images_per_s"] / by["torchvision"]
        r["of_ceiling"] = r["images_per_s"] / by["decode_ceiling"]
    return rows


# ------------------------------------------------------------------------- memory, one process per case

def _epoch_peak(kind: str, root: str, workers: int, batch: int) -> None:
    """Runs one epoch of ``kind`` and prints its peak resident memory (MiB) of this
    process and its children, sampled every 20 ms. Run in a fresh interpreter."""
    import psutil

    from pipelines import make_loader
    from pipelines.datasets import list_folder
    from pipelines.datasets.decode import decode_files
    from pipelines.stream import Decode, StreamSource

    me, peak, done = psutil.Process(), [0], threading.Event()

    def sample():
        while not done.is_set():
            procs = [me, *me.children(recursive=True)]
            total = 0
            for p in procs:
                try:  # PSS: pages shared by the forked workers counted once, not once per process
                    info = p.memory_full_info()
                    total += getattr(info, "pss", info.rss)
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)
            time.sleep(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    files = list_folder(root, "train")
    options = dict(batch_size=batch, image_size=SIDE, crop_padding=0, tasks=(), normalize=False, device="cpu")
    if kind == "stream":
        loader = make_loader(StreamSource(files, Decode("random_resized")), num_workers=workers, **options)
    else:
        loader = make_loader(decode_files(files, SIDE, workers=workers), **options)
    for _ in loader:
        pass
    done.set()
    watcher.join()
    print(json.dumps({"peak_mib": peak[0] / 2**20}))


def memory(tmp: Path, args) -> list[dict]:
    rows = []
    for n in (args.images, 4 * args.images):
        root = write_tree(tmp / f"mem{n}", n, seed=1)
        for kind in ("stream", "in_memory"):
            code = f"from bench.stream import _epoch_peak; _epoch_peak({kind!r}, {str(root)!r}, {args.workers}, {args.batch})"
            done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=3600)
            if done.returncode:
                raise RuntimeError(done.stderr[-2000:])
            rows.append({"loader": kind, "images": n, **json.loads(done.stdout.strip().splitlines()[-1])})
    return rows


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--images", type=int, default=2000, help="N: images of the memory run's small tree and of the throughput tree")
    p.add_argument("--workers", type=int, default=2, help="worker processes of every loader (the cores compared)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=8, help="batches per timed run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-memory", dest="memory", action="store_false", help="throughput only")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.batch, args.batches, args.rounds = 200, 16, 2, 1
    info = {**header(), "load_before": load_average(), "workers": args.workers, "batch": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = throughput(write_tree(tmp / "tree", args.images), args)
        mem = memory(tmp, args) if args.memory else []
    info["load_after"] = load_average()
    print_table("stream throughput: random-resized crop 224 + flip, uint8 batches", info, rows,
                ["loader", "images_per_s", "images_per_s_min", "images_per_s_max", "x_torchvision", "of_ceiling",
                 "start_s"])
    by = {r["loader"]: r["images_per_s"] for r in rows}
    targets = [
        check_target("torch stream / torchvision", by["torch_stream"] / by["torchvision"], 2.0),
        check_target("localizable transform's share of the stream's time",
                     1 - by["torch_stream_localizable"] / by["torch_stream"], 0.05, at_least=False),
    ]
    if mem:
        print_table("stream memory: peak PSS MiB of one epoch (process + workers)", {}, mem,
                    ["loader", "images", "peak_mib"])
        peaks = {(r["loader"], r["images"]): r["peak_mib"] for r in mem}
        targets.append(check_target("stream peak at 4N / at N",
                                    peaks[("stream", 4 * args.images)] / peaks[("stream", args.images)],
                                    1.10, at_least=False))
    print_targets(targets)
    write_json(args.json, "stream", {**info, "targets": targets}, rows + [{"memory": r} for r in mem])


if __name__ == "__main__":
    main()
