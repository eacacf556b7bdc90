"""Does G-SSL make a model more trustworthy? Calibration and OOD scores of a supervised and
a G-SSL model trained with the same settings on the built-in data.

    python -m bench.uncertainty [--epochs 15] [--train 3000] [--json out.json] [--quick]

Both runs: the shapes dataset at 32 px, ResNet-8, the same seed, optimizer and epochs;
the G-SSL run adds the three gated pretext heads (rotation, flip, perm), the supervised
run has none (``pretext.tasks = []``); both hold 0.1 of each class out of training
(``data.calibration_fraction``), the images the temperature is fitted on. Each is evaluated by ``python -m gssl_fast.evaluate
RUN --calibration --ood SOURCE`` against two OOD sources written here: uniform noise
images, and the shapes dataset's images with their colours inverted (near the data, a
harder source). Rows: accuracy, ECE before / after temperature scaling, and per source
each score's AUROC and FPR at 95 % TPR (the pretext scores need pretext heads: the
supervised row has none).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import bench_parser, header, load_average, print_table, write_json

ROOT = Path(__file__).resolve().parent.parent
RECIPE = """[data]
name = "shapes"
image_size = 32
train_size = {train}
val_size = {val}
calibration_fraction = 0.1

[model]
backbone = "resnet8_cifar"

[pretext]
tasks = {tasks}

[train]
epochs = {epochs}
batch_size = 64
eval_batch_size = 128
"""


def sources(folder: Path, n: int = 500) -> dict[str, Path]:
    """name -> an image folder of OOD images: uniform noise, and inverted shapes."""
    from pipelines.datasets import make_shapes
    from pipelines.datasets.testing import write_image_folder

    noise = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    inverted = 255 - make_shapes(n, image_size=32, seed=7, split="val").images
    labels = np.arange(n) % 2
    return {"noise": write_image_folder(folder / "noise", list(noise), labels),
            "inverted": write_image_folder(folder / "inverted", list(inverted), labels)}


def python(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=7200)
    if done.returncode:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
    return done.stdout


def evaluate(run: Path, ood: dict[str, Path]) -> dict[str, float]:
    args = ["-m", "gssl_fast.evaluate", str(run), "--calibration"]
    for path in ood.values():
        args += ["--ood", str(path)]
    pairs = [line.split() for line in python(*args).splitlines()]
    return {p[0]: float(p[1]) for p in pairs if len(p) == 2}  # "name value" lines; notes are longer


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--train", type=int, default=3000, help="training images")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.train = 1, 256
    info = {**header(), "load_before": load_average(), "epochs": args.epochs, "train_images": args.train}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ood = sources(tmp, n=100 if args.quick else 500)
        for name, tasks in (("supervised", "[]"), ("gssl", '["rotation", "flip", "perm"]')):
            recipe = tmp / f"{name}.toml"
            recipe.write_text(RECIPE.format(train=args.train, val=100 if args.quick else 500, tasks=tasks,
                                            epochs=args.epochs))
            python("-m", "gssl_fast.train", str(recipe), "--out", str(tmp / name))
            got = evaluate(tmp / name, ood)
            row = {"model": name, "acc1": got["acc1"], "ece": got["ece"], "ece_calibrated": got["ece_calibrated"],
                   "temperature": got["temperature"]}
            for source in ood:
                for score in ("msp", "energy", "pretext", "msp_pretext"):
                    for what in ("auroc", "fpr95"):
                        row[f"{source}_{score}_{what}"] = got.get(f"ood_{source}_{score}_{what}")
            rows.append(row)
    info["load_after"] = load_average()
    columns = ["model", "acc1", "ece", "ece_calibrated", "temperature"]
    print_table("calibration: validation split", info, rows, columns)
    for source in ood:
        print_table(f"OOD against {source}: AUROC (FPR95) of each score", {}, [
            {"model": r["model"], **{s: r[f"{source}_{s}_auroc"] for s in ("msp", "energy", "pretext", "msp_pretext")}}
            for r in rows], ["model", "msp", "energy", "pretext", "msp_pretext"])
    write_json(args.json, "uncertainty", info, rows)


if __name__ == "__main__":
    main()
