"""`make gpu-check` at its CPU size: every measurement runs and lands in the JSON, and it says it ran tiny."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers.paths import ROOT
from helpers.repo import base_env


@pytest.mark.slow
def test_gpu_check_runs_at_cpu_size(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "tiny size" in proc.stdout
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["size"] == 64 and "tiny size" in result["mode"]
    for label in ("fp32", "channels_last+bf16"):
        assert result["model"][label]["train_img_s"] > 0 and result["model"][label]["infer_img_s"] > 0
    assert result["loader"]["img_s"] > 0
    epoch = result["reference_epoch"]
    assert epoch["steps"] >= 1 and epoch["test"]["model"]["n"] == epoch["test"]["centre_prior"]["n"] > 0
