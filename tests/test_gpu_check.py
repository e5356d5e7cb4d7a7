"""scripts/gpu_check.sh: the whole chain on real files at --tiny size on the CPU, every stage kept
when another fails, fresh attempt folders, and a verdict that says what it measured."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, assert_one_line_error, write_image_folder, write_shapes_folder

import engine
from scripts import gpu_check

STAGES = ["versions", "memory_plan", "no_sync", "training", "evaluation", "baseline", "benchmark"]
EVALUATION = {"knn_top1": 30.0, "linear_top1_final": 40.0, "linear_top1_best_over_test_epochs": 41.0,
              "test_patches": 4, "precision": "bf16", "channels_last": True, "parts_seconds": {"linear": 1.0}}
STUB_RESULTS = {  # what each stage returns, in the shape of the real ones
    "versions": {"gpu": None, "driver": None, "torch": "2", "cuda": None, "cudnn": None},
    "memory_plan": {"arch": "resnet10-cifar", "images": 16,
                    "plans": {"4 patches, fp32": {"gib_at_k1": 0.1, "auto_k": 1}}},
    "no_sync": {"syncs": [], "method": "counted"},
    "evaluation": EVALUATION, "baseline": {**EVALUATION, "knn_top1": 20.0},
    "benchmark": {"train": {p: {"s_per_cifar10_epoch": 1.0, "model_share": 0.5} for p in ("batched", "pil")}},
}


def run_check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


class TestTinyChainOnJpegFiles:
    def test_every_stage_runs_on_the_folder_given_and_keeps_big_files_apart(self, tmp_path: Path,
                                                                            pixel_cache: Path) -> None:
        data = write_shapes_folder(tmp_path / "cifar-jpeg", train_per_class=160, test_per_class=20)
        done = run_check("--tiny", "--data_dir", str(data), "--out", "check", cwd=tmp_path)
        attempt = tmp_path / "check" / "attempt-1"
        record = json.loads((attempt / "gpu_check.json").read_text())
        assert list(record["stages"]) == STAGES
        assert all(stage["status"] == "ok" and stage["seconds"] > 0 for stage in record["stages"].values()), \
            {name: stage.get("error") for name, stage in record["stages"].items()}
        stages = record["stages"]
        assert (stages["training"]["data"], stages["training"]["data_dir"]) == ("imagefolder", str(data))
        assert stages["training"]["steps"] == 50 and stages["training"]["loss_finite"]
        assert stages["no_sync"]["syncs"] == []
        assert {p["auto_k"] for p in stages["memory_plan"]["plans"].values()} == {1}  # toy steps fit whole
        for name in ("evaluation", "baseline"):
            assert (stages[name]["precision"], stages[name]["channels_last"], stages[name]["test_patches"]) == \
                   ("bf16", True, 8)
        assert stages["benchmark"]["config"]["data"] == "imagefolder"
        verdicts = {line["check"].split(" ")[0]: line["verdict"] for line in record["verdict"]}
        assert verdicts == {"loss": "PASS", "trained": "PASS", "no": "PASS", "seconds": "INFO", "top-1": "INFO"}
        trained, random_init = stages["evaluation"]["knn_top1"], stages["baseline"]["knn_top1"]
        assert trained >= random_init + gpu_check.KNN_MARGIN["tiny"]  # 50 steps learn the shapes
        assert record["verdict"][1] == {"check": "trained kNN top-1 ≥ random init + 5 points", "verdict": "PASS",
                                        "measured": f"{trained:.2f} vs {random_init:.2f}"}
        assert done.returncode == 0 and "gpu check: PASS" in done.stdout, done.stderr[-2000:]
        assert "| no synchronising call in a fast-path step | PASS | 0 " in done.stdout
        assert (attempt / "gpu_check.md").read_text().strip() in done.stdout
        assert "== training ==" in (attempt / "gpu_check.log").read_text()
        assert not list(attempt.rglob("*.pt")) and not list(attempt.rglob("*.features"))  # small outputs only
        assert (tmp_path / "check" / "work" / "attempt-1" / "run" / "save_models" / "0.pt").is_file()
        assert list(pixel_cache.rglob("*.npy"))  # decoded once, in $EMP_SSL_CACHE, never beside the data
        assert not list(data.rglob("*.npy")) and sorted(p.name for p in data.iterdir()) == ["test", "train"]


class TestARunThatDoesNotLearn:
    def test_fails_the_learning_check_and_exits_non_zero(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
        """The row's training, evaluation and baseline run for real on the synthetic set with every
        update refused (weights, BatchNorm statistics and optimiser state stay those of the random
        init), so the evaluated encoder is no better than random init; the stages that do not bear
        on learning are stubbed."""
        for name, function in (("versions", "versions"), ("memory_plan", "memory_plans"),
                               ("no_sync", "check_no_sync"), ("benchmark", "run_benchmark")):
            monkeypatch.setattr(gpu_check, function, lambda *args, name=name: STUB_RESULTS[name])
        short = ["320" if flag == "1600" else flag for flag in gpu_check.TINY_TRAIN]  # --train_subset: 10 steps
        monkeypatch.setattr(gpu_check, "TINY_TRAIN", short)
        monkeypatch.setattr(engine.NonFiniteGuard, "allow",
                            lambda self, loss: torch.zeros((), dtype=torch.bool, device=loss.device))
        out = tmp_path / "check"
        with pytest.raises(SystemExit) as stop:
            gpu_check.main(gpu_check.get_args_parser().parse_args(["--tiny", "--out", str(out),
                                                                   "--work_dir", str(tmp_path / "work")]))
        assert stop.value.code == 1
        record = json.loads((out / "attempt-1" / "gpu_check.json").read_text())
        assert all(stage["status"] == "ok" for stage in record["stages"].values()), record["stages"]
        training = record["stages"]["training"]
        assert training["steps"] == 10 and training["loss_finite"]
        trained, random_init = (record["stages"][name]["knn_top1"] for name in ("evaluation", "baseline"))
        assert trained < random_init + gpu_check.KNN_MARGIN["tiny"]
        assert [(line["check"], line["verdict"]) for line in record["verdict"][:3]] == [
            ("loss finite at every training step", "PASS"), ("trained kNN top-1 ≥ random init + 5 points", "FAIL"),
            ("no synchronising call in a fast-path step", "PASS")]
        assert capsys.readouterr().err.strip().splitlines()[-1] == \
               "gpu check: FAIL (trained kNN top-1 ≥ random init + 5 points)"


class TestStages:
    def test_a_failed_stage_is_recorded_and_the_others_still_run(self, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        """Every stage finds the previous one already on disk; training fails with its one line."""
        out = tmp_path / "check"
        seen = []

        def stage(name: str):
            def run(*args: object) -> dict:
                record = json.loads((out / "attempt-1" / "gpu_check.json").read_text()) if seen else {"stages": {}}
                assert list(record["stages"]) == seen  # rewritten after every stage
                seen.append(name)
                if name == "training":
                    raise RuntimeError("CUDA out of memory.\nTried to allocate 20 GiB")
                return STUB_RESULTS[name]
            return run

        for name, function in (("versions", "versions"), ("memory_plan", "memory_plans"), ("no_sync", "check_no_sync"),
                               ("training", "run_training"), ("benchmark", "run_benchmark")):
            monkeypatch.setattr(gpu_check, function, stage(name))
        monkeypatch.setattr(gpu_check, "run_evaluation", lambda argv, output: stage(
            "baseline" if "--random_init" in argv else "evaluation")())
        with pytest.raises(SystemExit) as stop:
            gpu_check.main(gpu_check.get_args_parser().parse_args(["--tiny", "--out", str(out)]))
        assert stop.value.code == 1
        record = json.loads((out / "attempt-1" / "gpu_check.json").read_text())
        assert seen == STAGES and list(record["stages"]) == STAGES
        assert record["stages"]["training"] == {"status": "failed", "error": "RuntimeError: CUDA out of memory.",
                                                "seconds": record["stages"]["training"]["seconds"]}
        assert [record["stages"][name]["status"] for name in STAGES] == ["ok", "ok", "ok", "failed", "ok", "ok", "ok"]
        assert record["verdict"][0] == {"check": "loss finite at every training step", "verdict": "FAIL",
                                        "measured": "training did not finish"}

    def test_every_call_is_a_new_attempt(self, tmp_path: Path) -> None:
        for name in ("attempt-1", "attempt-3", "attempt-x", "notes"):
            (tmp_path / name).mkdir()
        assert gpu_check.new_attempt(tmp_path) == tmp_path / "attempt-4" and (tmp_path / "attempt-4").is_dir()
        assert gpu_check.new_attempt(tmp_path / "new") == tmp_path / "new" / "attempt-1"

    def test_a_folder_that_is_not_cifar_is_refused_before_anything_runs(self, cli, tmp_path: Path) -> None:
        (tmp_path / "empty").mkdir()
        assert_one_line_error(cli("scripts.gpu_check", "--tiny", "--data_dir", str(tmp_path / "empty")),
                              "cifar-10-batches-py", "train/")
        assert not (tmp_path / "gpu_check").exists()

    def test_a_folder_too_small_is_refused_in_gpu_checks_own_flags(self, cli, tmp_path: Path) -> None:
        """Five images: the stages would say "--train_subset … lower it" and "lower --bs", flags gpu_check has not."""
        data = write_image_folder(tmp_path / "five", classes=("a", "b", "c", "d", "e"), sizes=[(32, 32)],
                                  splits=("train", "test"))
        result = cli("scripts.gpu_check", "--tiny", "--data_dir", str(data))
        assert_one_line_error(result, f"--data_dir {data} holds 5 training images", "--tiny trains on 1,600",
                              "leave it out for the built-in synthetic set")
        assert "--train_subset" not in result.stderr and "--bs" not in result.stderr
        assert not (tmp_path / "gpu_check").exists()


class TestLauncher:
    def test_a_python_without_torch_is_one_line_naming_it(self, tmp_path: Path) -> None:
        """A python3 first on PATH that is a real interpreter without site-packages (-I -S): no torch."""
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        fake = bin_dir / "python3"
        fake.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -I -S \"$@\"\n")
        fake.chmod(0o755)
        assert subprocess.run([str(fake), "-c", "import torch"], capture_output=True, check=False).returncode != 0
        env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
        done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--tiny"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert_one_line_error(done, f"{fake} cannot import the requirements", "No module named 'torch'",
                              f"{fake} -m pip install -r", "requirements.txt", "set PYTHON")
        assert done.returncode == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["bin"]
        env["PYTHON"] = str(tmp_path / "missing")
        done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--tiny"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert_one_line_error(done, f"PYTHON={tmp_path / 'missing'} is not a program")


class TestVerdict:
    @staticmethod
    def record(knn: float, baseline_knn: float, loss_last: float = -5.0, syncs: tuple = (), tiny: bool = True) -> dict:
        train = {"status": "ok", "steps": 10, "loss_first": -1.0, "loss_last": loss_last,
                 "loss_finite": loss_last == loss_last and abs(loss_last) != float("inf"), "patches_per_s": 640.0,
                 "images_per_s": 160.0, "s_per_epoch": 1.0}
        evaluation = {"status": "ok", "knn_top1": knn, "linear_top1_final": 50.0,
                      "linear_top1_best_over_test_epochs": 52.0}
        return {"tiny": tiny, "stages": {
            "versions": {"status": "ok", "gpu": None}, "training": train, "evaluation": evaluation,
            "baseline": {**evaluation, "knn_top1": baseline_knn},
            "no_sync": {"status": "ok", "syncs": list(syncs), "method": "counted"}}}

    def verdicts(self, record: dict) -> list[str]:
        return [line["verdict"] for line in gpu_check.verdict(record)]

    def test_a_learning_encoder_passes(self) -> None:
        assert self.verdicts(self.record(knn=40.0, baseline_knn=35.0)) == ["PASS", "PASS", "PASS", "INFO", "INFO"]

    def test_the_knn_margin_is_5_points_at_tiny_size_and_20_at_full_size(self) -> None:
        assert self.verdicts(self.record(knn=39.9, baseline_knn=35.0))[1] == "FAIL"
        assert self.verdicts(self.record(knn=54.9, baseline_knn=35.0, tiny=False))[1] == "FAIL"
        assert self.verdicts(self.record(knn=55.0, baseline_knn=35.0, tiny=False))[1] == "PASS"

    def test_a_nan_loss_and_a_sync_fail(self) -> None:
        verdicts = self.verdicts(self.record(knn=60.0, baseline_knn=30.0, loss_last=float("nan"),
                                             syncs=("lift_fresh",)))
        assert verdicts[0] == "FAIL" and verdicts[2] == "FAIL"
