"""scripts/gpu_check.sh --tiny: the whole GPU check chain on the CPU, so the script cannot rot."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import ROOT


def test_tiny_chain_writes_one_json_and_prints_one_table(tmp_path: Path) -> None:
    out = tmp_path / "check"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--tiny", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["tiny"] and result["versions"]["torch"]
    train = result["benchmark"]["train"]
    assert train["batched"]["steps_per_s"] > 0 and train["pil"]["steps_per_s"] > 0
    row = result["row"]
    assert row["row"] == "cifar10-1ep" and row["smoke"] and row["schedule_epochs"] == 2 and row["trained_epochs"] == 1
    assert 0 <= row["knn_top1"] <= 100 and 0 <= row["linear_top1_final"] <= 100 and row["eval_seconds"] > 0
    assert "| kNN top-1 (random init) |" in done.stdout and f"written: {out / 'gpu_check.json'}" in done.stdout
    again = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--tiny", "--out", str(out)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith("error:")
    assert "exists" in again.stderr and "Traceback" not in again.stderr
