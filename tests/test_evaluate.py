"""evaluate.py end to end on the synthetic set: outputs, the cache, checkpoint formats, bad input,
the training-time kNN monitor, and a trained encoder beating its random-init baseline."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, assert_one_line_error
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import evaluate
from model import Encoder
from plumbing.checkpoint import save_checkpoint

ARCH = {"arch": "resnet10-cifar", "hidden_dim": 16, "z_dim": 8}
ARCH_FLAGS = ["--arch", "resnet10-cifar", "--hidden_dim", "16", "--z_dim", "8"]
# A run that learns within seconds on the synthetic set: 30 steps of 64 images × 4 patches. Measured
# by hand for seeds 0, 1, 2 with E2E_EVAL: kNN top-1 31.3 / 27.7 / 30.9 against random-init
# 21.7 / 17.3 / 19.9, a gain of 9.6 to 11.0 points, so the test asks for half of the smallest.
E2E_TRAIN = ["--data", "synthetic", "--arch", "resnet10-cifar", "--hidden_dim", "256", "--z_dim", "128",
             "--num_patches", "4", "--bs", "64", "--train_subset", "640", "--epoch", "3", "--lr", "1.0",
             "--workers", "0", "--device", "cpu"]
E2E_EVAL = ["--train_subset", "500", "--test_subset", "1000", "--test_patches", "2", "--workers", "0",
            "--device", "cpu", "--no-linear"]
E2E_MARGIN = 5.0  # kNN top-1 points above the random-init baseline
QUICK = ["--train_subset", "20", "--test_subset", "10", "--test_patches", "2", "--workers", "0",
         "--device", "cpu", "--linear_epochs", "3"]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(**ARCH)


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """One of our checkpoints of an untrained encoder (seed 0), trained on `synthetic`."""
    path = tmp_path / "run" / "save_models" / "3.pt"
    save_checkpoint({"model": encoder().state_dict(), "args": {"data": "synthetic", "data_dir": "data", **ARCH},
                     "epoch": 3, "step": 40}, path)
    return path


def features(folder: Path, prefix: str, split: str = "train") -> torch.Tensor:
    (path,) = folder.glob(f"{prefix}.{split}-*.features")
    return torch.load(path, weights_only=True)["features"]


class TestEvaluate:
    def test_writes_summary_and_json_with_every_number_and_the_configuration(self, cli, ckpt: Path) -> None:
        result = cli("evaluate", "--ckpt", str(ckpt), *QUICK)
        assert result.returncode == 0, result.stderr
        out = ckpt.with_name("3.eval.json")
        assert f"results: {out}" in result.stdout
        summary = [line for line in result.stdout.splitlines() if "kNN top-1" in line]
        assert len(summary) == 1 and "linear top-1" in summary[0] and "best over test epochs" in summary[0]
        record = json.loads(out.read_text())
        assert record["data"] == "synthetic" and record["arch"] == "resnet10-cifar"  # from the checkpoint
        assert (record["train_images"], record["test_images"], record["num_classes"]) == (20, 10, 10)
        assert record["test_patches"] == 2 and record["seed"] == 0 and record["checkpoint_epoch"] == 3
        assert record["augment"] == "batched" and record["precision"] == "fp32"  # the defaults
        assert record["knn"]["k"] == 20 and 0 <= record["knn"]["top1"] <= record["knn"]["top5"] <= 100
        linear = record["linear"]
        assert (linear["epochs"], linear["lr"], linear["wd"], linear["bs"]) == (3, 0.03, 5e-5, 100)
        assert linear["top1"] == linear["test_top1_per_epoch"][-1]  # the result is the final epoch
        assert linear["best_top1_over_test_epochs (official reporting)"] == max(linear["test_top1_per_epoch"])
        assert features(ckpt.parent, "3.pt").shape == (20, 16)

    def test_features_are_cached_and_recomputed_on_request(self, cli, ckpt: Path) -> None:
        first = cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--no-linear")
        second = cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--no-linear")
        assert first.stdout.count("computed features") == 2 and second.stdout.count("cached features") == 2
        third = cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--no-linear", "--recompute", "--test_patches", "1")
        assert third.stdout.count("computed features") == 2
        assert len(list(ckpt.parent.glob("*.features"))) == 4  # 2 splits × 2 patch counts
        save_checkpoint({"model": encoder(seed=1).state_dict(), "args": {"data": "synthetic", **ARCH}}, ckpt)
        retrained = cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--no-linear")
        assert retrained.stdout.count("computed features") == 2  # the key holds the checkpoint's content

    def test_an_edit_to_the_augmentation_computes_features_afresh(self, cli, ckpt: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        """The cache key holds the code that makes patches: a constant of the augmentation changed
        (here the solarize threshold, as a forker would edit it) is never served the old features."""
        assert cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--no-linear").stdout.count("computed features") == 2
        for module in [m for name, m in sys.modules.items() if name.startswith("dataset.")]:
            if hasattr(module, "SOLARIZE_THRESHOLD"):
                monkeypatch.setattr(module, "SOLARIZE_THRESHOLD", 100)
        edited = cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--no-linear")
        assert edited.returncode == 0 and edited.stdout.count("computed features") == 2, edited.stderr
        monkeypatch.undo()
        assert cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--no-linear").stdout.count("cached features") == 2

    def test_both_augment_paths_end_to_end_each_with_its_own_cache(self, cli, ckpt: Path) -> None:
        for augment in ("batched", "pil"):
            result = cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--no-linear", "--augment", augment)
            assert result.returncode == 0 and result.stdout.count("computed features") == 2, result.stderr
            record = json.loads(ckpt.with_name("3.eval.json").read_text())
            assert record["augment"] == augment and 0 <= record["knn"]["top1"] <= 100
        assert len(list(ckpt.parent.glob("*.features"))) == 4  # 2 splits × 2 paths
        assert_one_line_error(cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--augment", "gpu"), "--augment")

    def test_channels_last_is_recorded_keyed_and_gives_the_same_features(self, cli, ckpt: Path) -> None:
        plain = cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--no-linear")
        assert json.loads(ckpt.with_name("3.eval.json").read_text())["channels_last"] is False
        (contiguous,) = ckpt.parent.glob("3.pt.train-*.features")
        fast = cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--no-linear", "--channels_last")
        assert plain.returncode == 0 and fast.returncode == 0, fast.stderr
        assert fast.stdout.count("computed features") == 2  # its own cache entries, not the contiguous run's
        assert json.loads(ckpt.with_name("3.eval.json").read_text())["channels_last"] is True
        (channels_last,) = set(ckpt.parent.glob("3.pt.train-*.features")) - {contiguous}
        torch.testing.assert_close(torch.load(channels_last, weights_only=True)["features"],
                                   torch.load(contiguous, weights_only=True)["features"], rtol=1e-4, atol=1e-5)

    def test_bf16_runs_the_probes_with_tf32_matmuls_and_fp32_without(self, cli, ckpt: Path, monkeypatch) -> None:
        seen, run_probes = [], evaluate.run_probes

        def spy(*args, **kwargs):
            seen.append(torch.backends.cuda.matmul.fp32_precision)
            return run_probes(*args, **kwargs)

        monkeypatch.setattr(evaluate, "run_probes", spy)
        before = torch.backends.cuda.matmul.fp32_precision
        for precision in ("fp32", "bf16"):
            result = cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--no-linear", "--precision", precision)
            assert result.returncode == 0, result.stderr
            assert torch.backends.cuda.matmul.fp32_precision == before  # restored
        assert seen == [before, "tf32"] and before != "tf32"

    def test_official_checkpoint_gives_the_same_features_as_ours(self, cli, ckpt: Path, tmp_path: Path) -> None:
        official = tmp_path / "official" / "model.pt"
        official.parent.mkdir()
        torch.save({f"module.{k}": v for k, v in encoder().state_dict().items()}, official)
        ours = cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--no-linear")
        theirs = cli("evaluate", "--model_path", str(official), *ARCH_FLAGS, "--data", "synthetic", *QUICK,
                     "--no-linear")
        assert ours.returncode == 0 and theirs.returncode == 0, theirs.stderr
        for split in ("train", "test"):
            torch.testing.assert_close(features(official.parent, "model.pt", split),
                                       features(ckpt.parent, "3.pt", split))
        assert json.loads(official.with_name("model.eval.json").read_text())["knn"] == \
            json.loads(ckpt.with_name("3.eval.json").read_text())["knn"]

    def test_random_init_is_the_seeded_untrained_encoder(self, cli, ckpt: Path, tmp_path: Path) -> None:
        beside = cli("evaluate", "--ckpt", str(ckpt), "--random_init", *QUICK, "--no-linear")
        alone = cli("evaluate", "--random_init", *ARCH_FLAGS, "--data", "synthetic", *QUICK, "--no-linear",
                    "--output", str(tmp_path / "baseline" / "r.json"))
        assert beside.returncode == 0 and alone.returncode == 0, alone.stderr
        random_init = json.loads(ckpt.with_name("3.random_init.eval.json").read_text())
        assert random_init["random_init"] and random_init["arch"] == "resnet10-cifar"
        assert random_init["knn"] == json.loads((tmp_path / "baseline" / "r.json").read_text())["knn"]
        # the checkpoint holds the encoder that seed 0 initialises, so its features are the same
        torch.testing.assert_close(features(tmp_path / "baseline", "random_init"), features(ckpt.parent, "3.pt"))


class TestBadInput:
    @pytest.mark.parametrize("make,flags,fragments", [
        (None, [], ["no checkpoint at"]),
        (lambda p: p.write_bytes(bytes(range(256)) * 4), [], ["not a readable PyTorch checkpoint"]),
        (lambda p: p.write_text("epoch 3: loss -200\n"), [], ["not a readable PyTorch checkpoint"]),
        (lambda p: torch.save({"lr": 0.3}, p), [], ["neither a training checkpoint"]),
        (lambda p: torch.save(encoder().state_dict(), p), [*ARCH_FLAGS, "--arch", "resnet18-cifar"],
         ["does not match the model", "missing keys", "--arch"]),
        (lambda p: torch.save({k: v for k, v in encoder().state_dict().items() if k != "pre_feature.0.weight"}, p),
         ARCH_FLAGS, ["missing keys: pre_feature.0.weight", "unexpected keys: none"]),
        (lambda p: torch.save(encoder().state_dict(), p), [*ARCH_FLAGS, "--test_patches", "0"], ["--test_patches"]),
        (lambda p: torch.save(encoder().state_dict(), p),
         [*ARCH_FLAGS, "--data", "imagefolder", "--data_dir", "nowhere"], ["nowhere", "--data_dir"]),
    ], ids=["missing", "random-bytes", "text", "foreign-dict", "arch-mismatch", "missing-key", "no-patches", "no-data"])
    def test_one_line_and_nothing_written(self, cli, tmp_path: Path, make, flags: list[str],
                                          fragments: list[str]) -> None:
        path = tmp_path / "ckpts" / "model.pt"
        path.parent.mkdir()
        if make is not None:
            make(path)
        before = tree(tmp_path)
        result = cli("evaluate", "--ckpt", str(path), "--data", "synthetic", *QUICK, *flags)
        assert_one_line_error(result, *fragments)
        assert tree(tmp_path) == before

    def test_needs_a_checkpoint_or_random_init_with_an_output(self, cli) -> None:
        assert_one_line_error(cli("evaluate", *QUICK), "--ckpt")
        assert_one_line_error(cli("evaluate", "--random_init", *QUICK), "--output")


class TestTrainingMonitor:
    def test_eval_every_logs_knn_top1_to_tensorboard(self, cli, tmp_path: Path) -> None:
        result = cli("main", *TINY_RUN, "--output_dir", str(tmp_path / "run"), "--epoch", "2", "--eval_every", "1",
                     "--eval_patches", "1", "--eval_subset", "20")
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("kNN top-1") == 2
        events = EventAccumulator(str(tmp_path / "run"))
        events.Reload()
        logged = events.Scalars("eval/knn_top1")
        assert [e.step for e in logged] == [4, 8] and all(0 <= e.value <= 100 for e in logged)


class TestEndToEnd:
    def test_trained_encoder_beats_its_random_init_baseline(self, cli, tmp_path: Path) -> None:
        trained = cli("main", *E2E_TRAIN, "--output_dir", str(tmp_path / "run"))
        assert trained.returncode == 0, trained.stderr
        last = tmp_path / "run" / "save_models" / "last.pt"
        for flags in ([], ["--random_init"]):
            result = cli("evaluate", "--ckpt", str(last), *E2E_EVAL, *flags)
            assert result.returncode == 0, result.stderr
        ours = json.loads(last.with_name("last.eval.json").read_text())
        baseline = json.loads(last.with_name("last.random_init.eval.json").read_text())
        assert (ours["arch"], ours["hidden_dim"], ours["test_images"]) == ("resnet10-cifar", 256, 1000)
        assert ours["knn"]["top1"] >= baseline["knn"]["top1"] + E2E_MARGIN, (ours["knn"], baseline["knn"])


class TestBenchmark:
    def test_runs_and_prints_the_table(self, cli) -> None:
        result = cli("scripts.benchmark_eval", "--images", "2", "--eval_bs", "2", "--test_patches", "2", "--arch",
                     "resnet10-cifar", "--hidden_dim", "16", "--workers", "0", "--dim", "8", "--knn_train", "50",
                     "--knn_test", "10", "--linear_train", "50", "--linear_epochs", "1", "--device", "cpu")
        assert result.returncode == 0, result.stderr
        for row in ("patch generation, batched / pil", "extraction, batched / pil"):
            assert f"| {row} |" in result.stdout
        assert "synthetic: 2 images x 2 patches" in result.stdout
        assert json.loads(result.stdout.splitlines()[-1])["images"] == 2
