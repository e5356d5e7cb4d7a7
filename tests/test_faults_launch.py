"""Faults at a program's start end in one line: Ctrl-C while an entry point is still importing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, Result, assert_one_line_error

# `python -c INTERRUPT_AT_IMPORT <entry point>`: runs the entry point as a program (with --help) and
# sends itself Ctrl-C the moment that program first imports torch, the slow part of its start.
INTERRUPT_AT_IMPORT = f"""
import os, runpy, signal, sys

class InterruptAtTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.path.insert(0, {str(ROOT)!r})
sys.argv = [sys.argv[1], "--help"]
sys.meta_path.insert(0, InterruptAtTorch())
runpy.run_path(sys.argv[0], run_name="__main__")
"""

ENTRY_POINTS = ["main.py", "evaluate.py", "scripts/benchmark.py", "scripts/benchmark_eval.py", "scripts/export.py",
                "scripts/results_table.py", "scripts/reproduce.py", "scripts/gpu_check.py"]


class TestCtrlCWhileStarting:
    @pytest.mark.parametrize("entry", ENTRY_POINTS)
    def test_ctrl_c_while_importing_is_one_line_and_status_130(self, tmp_path: Path, entry: str) -> None:
        done = subprocess.run([sys.executable, "-c", INTERRUPT_AT_IMPORT, str(ROOT / entry)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        result = Result(done.returncode, done.stdout, done.stderr)
        assert result.returncode == 130 and result.stdout == "", result.stderr
        assert_one_line_error(result, "interrupted (Ctrl-C)")

    def test_the_entry_points_are_all_there(self) -> None:
        programs = {str(path.relative_to(ROOT)) for path in ROOT.glob("scripts/*.py") if "run_cli(" in path.read_text()}
        assert programs | {"main.py", "evaluate.py"} == set(ENTRY_POINTS)
