"""Every benchmark script runs end to end in its --quick mode and writes its JSON rows.

Speed is measured in bench/, never asserted here: these only prove the scripts work.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["transform", "loaders", "train_step", "method_step", "scaling", "dali_loader", "ffcv_loader", "kornia_ops",
           "fixmatch_loader", "simclr_loader", "guided_plan", "crash_points", "decode_cache", "stream", "uncertainty"]
WITH_TARGETS = {"transform", "loaders", "train_step", "method_step", "fixmatch_loader", "simclr_loader",
                "decode_cache", "stream"}
NEEDS = {"kornia_ops": "kornia"}  # scripts measuring an optional library: skipped without it


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_run_writes_rows(tmp_path, script):
    if script in NEEDS:
        pytest.importorskip(NEEDS[script])
    out = tmp_path / f"{script}.json"
    proc = subprocess.run([sys.executable, "-m", f"bench.{script}", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["rows"] and result["header"]["torch"]
    if script in WITH_TARGETS:
        assert result["header"]["targets"]
