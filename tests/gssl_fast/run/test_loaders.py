"""What the trainer's loaders read: unreadable files skipped and counted with each loader."""

import numpy as np
import pytest

from gssl_fast.run.loaders import SKIPPED_FILE
from gssl_fast.train import main
from pipelines.datasets.testing import write_image_folder, write_unreadable
from tests.gssl_fast.tiny import write_tiny


@pytest.mark.parametrize("loader", ["torch", "dali", "ffcv"])
def test_unreadable_images_are_skipped_and_counted(tmp_path, capsys, loader):
    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    for split, n in (("train", 30), ("val", 10)):
        write_image_folder(root / split, rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), np.arange(n) % 2)
    bad = [write_unreadable(root / "train" / "class_000" / f"bad_{kind}.jpg", kind) for kind in ("truncated", "empty")]
    recipe = write_tiny(tmp_path)  # every batch: DALI meets a bad file only when it reads it
    out = tmp_path / "run"
    data = ['data.name="imagefolder"', f'data.root="{root}"']
    argv = [str(recipe), "--out", str(out), "--set", f"train.loader={loader}", "--set", "train.batch_size=8"]
    argv += [arg for d in data for arg in ("--set", d)]
    assert main(argv) == 2, "an unreadable file stops the run by default"
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and any(f"error: cannot read image {b}: it " in errors[0] for b in bad), errors
    assert main(argv + ["--set", 'data.on_corrupt="skip"', "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "left out 2 unreadable train images" in printed, printed
    listed = (out / SKIPPED_FILE).read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in listed) == sorted(map(str, bad))
    assert "30 train / 10 val images" in printed
