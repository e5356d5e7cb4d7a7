"""The repository itself: nothing a run wrote is tracked, and no tracked file is large."""
from __future__ import annotations

import subprocess

import pytest
from conftest import ROOT

LARGEST = 1 << 20  # bytes: a tracked file above 1 MiB is data or a run's output, not source
RUN_OUTPUTS = (".pt", ".pth", ".features", ".npy")  # checkpoints, feature caches, decoded pixels


def tracked_files() -> list[str]:
    """Paths git tracks in this checkout (relative to the root)."""
    done = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("not a git checkout")
    return [path for path in done.stdout.split("\0") if path]


class TestTrackedFiles:
    def test_no_run_output_is_tracked(self) -> None:
        outputs = [path for path in tracked_files()
                   if path.endswith(RUN_OUTPUTS) or "events.out.tfevents" in path or path.endswith(".eval.json")]
        assert outputs == []

    def test_no_tracked_file_is_over_one_mib(self) -> None:
        large = [path for path in tracked_files() if (ROOT / path).is_file() and (ROOT / path).stat().st_size > LARGEST]
        assert large == []

    def test_the_default_output_folders_are_ignored(self) -> None:
        """What main.py, reproduce.py, gpu_check.py and benchmark.py write by default, and a run's
        files wherever they land, are ignored by git."""
        paths = ["logs/run/args.json", "results/cifar10-1ep.json", "gpu_check/attempt-1/gpu_check.json",
                 "benchmark.json", "data/cifar-10-batches-py/data_batch_1", "elsewhere/save_models/0.pt",
                 "elsewhere/0.pt.test-0123.features", "elsewhere/events.out.tfevents.1.host.1.0"]
        done = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
        assert sorted(done.stdout.split()) == sorted(paths)
