"""scripts/benchmark.py measures what main.py trains: its steps are built by main.py's wiring from
main.py's flags, and the sliced step's memory is measured in fresh processes."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import main
from scripts import benchmark

CPU = torch.device("cpu")


def tiny(*argv: str):
    return benchmark.get_args_parser().parse_args(["--tiny", "--device", "cpu", *argv])


class TestWhatIsBenchmarked:
    def test_the_run_args_are_main_pys_with_the_sizes_and_speed_flags_over_them(self) -> None:
        run = benchmark.run_args(tiny("--precision", "bf16", "--channels_last"), {"bs": 8, "num_patches": 4}, "pil")
        official = main.get_args_parser().parse_args([])
        assert (run.bs, run.num_patches, run.augment, run.precision, run.channels_last, run.download) == \
               (8, 4, "pil", "bf16", True, False)
        method = ("arch", "hidden_dim", "z_dim", "patch_sim", "tcr", "eps", "lr", "wd", "lars_eta", "epoch", "seed")
        assert {k: getattr(run, k) for k in method} == {k: getattr(official, k) for k in method}

    def test_a_forkers_objective_is_the_one_each_training_path_runs(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """main.build_criterion is where a forker changes the method; the benchmark's steps call
        the criterion it builds, on every path, warm-up and timed steps alike."""
        calls: list[tuple[int, ...]] = []
        build_criterion = main.build_criterion

        class Recording(nn.Module):
            def __init__(self, criterion: nn.Module) -> None:
                super().__init__()
                self.criterion = criterion

            def forward(self, z: torch.Tensor, z_global: torch.Tensor):
                calls.append(tuple(z.shape))
                return self.criterion(z, z_global)

        monkeypatch.setattr(main, "build_criterion", lambda args: Recording(build_criterion(args)))
        args = tiny("--steps", "2", "--warmup", "1")
        cfg = benchmark.sizes(args)["train"]
        result = benchmark.bench_train(args, cfg, CPU)
        assert calls == [(4, 8, 32)] * 3 * 3  # (P, B, d); pil, batched, the model alone: 1 + 2 steps each
        assert result["batched"]["steps_per_s"] > 0 and result["model_alone"]["steps_per_s"] > 0


class TestSlicedStep:
    def test_slices_lower_the_peak_memory_each_measured_in_a_fresh_process(self) -> None:
        args = tiny()
        cfg = benchmark.sizes(args)["chunks"]
        result = benchmark.bench_chunks(args, cfg, CPU)
        whole, sliced = result["K=1"], result["K=5"]
        assert whole["peak_bytes"] > 0 and whole["seconds"] > 0 and sliced["seconds"] > 0
        assert result["memory_ratio"] == sliced["peak_bytes"] / whole["peak_bytes"] < 0.75
