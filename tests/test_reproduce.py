"""scripts/reproduce.py: the rows against the paper, the official one-epoch protocol, and the
whole chain at --smoke size."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
from conftest import (
    ROOT,
    TINY_RUN,
    assert_one_line_error,
    sigterm_after_first_step,
    write_cifar_batches,
    write_image_folder,
)
from PIL import Image

import evaluate
import main
from scripts.reproduce import SMOKE_FOLDERS, write_smoke_folder
from scripts.rows import ROWS, TRANSFER_ROWS

# Written from the paper and the official README (REFERENCE.md, "Published numbers"), not from the
# code: data set, backbone, patches, schedule (--epoch), epochs trained, published linear top-1 (%).
PAPER = {
    "cifar10-1ep": ("cifar10", "resnet18-cifar", 20, 2, 1, 84.2),
    "cifar10-1ep-30sched": ("cifar10", "resnet18-cifar", 20, 30, 1, 80.6),
    "cifar10-10ep": ("cifar10", "resnet18-cifar", 20, 10, 10, 90.7),
    "cifar10-30ep": ("cifar10", "resnet18-cifar", 20, 30, 30, 93.1),
    "cifar10-200p-1ep-30sched": ("cifar10", "resnet18-cifar", 200, 30, 1, 82.6),
    "cifar100-1ep": ("cifar100", "resnet18-cifar", 20, 2, 1, 58.5),
    "cifar100-1ep-30sched": ("cifar100", "resnet18-cifar", 20, 30, 1, 55.1),
    "cifar100-10ep": ("cifar100", "resnet18-cifar", 20, 10, 10, 67.8),
    "cifar100-30ep": ("cifar100", "resnet18-cifar", 20, 30, 30, 72.4),
    "cifar100-200p-1ep-30sched": ("cifar100", "resnet18-cifar", 200, 30, 1, 57.7),
    "cifar10-200p-10ep": ("cifar10", "resnet18-cifar", 200, 10, 10, 91.5),
    "cifar10-200p-30ep": ("cifar10", "resnet18-cifar", 200, 30, 30, 93.4),
    "cifar100-200p-10ep": ("cifar100", "resnet18-cifar", 200, 10, 10, 70.1),
    "cifar100-200p-30ep": ("cifar100", "resnet18-cifar", 200, 30, 30, 73.3),
    "tinyimagenet-200p-10ep": ("tinyimagenet", "resnet18-tinyimagenet", 200, 10, 10, 51.5),
    "imagenet100-200p-10ep": ("imagenet100", "resnet18-imagenet", 200, 10, 10, 78.9),
    "tinyimagenet-1ep": ("tinyimagenet", "resnet18-tinyimagenet", 20, 2, 1, 38.1),
    "imagenet100-1ep": ("imagenet100", "resnet18-imagenet", 20, 2, 1, 58.5),
}

# Every key of a result file, written here rather than taken from scripts/rows.py.
PERCENT_KEYS = ["published_linear_top1", "linear_top1_final", "linear_top1_best_over_test_epochs", "knn_top1",
                "random_init_linear_top1_final", "random_init_knn_top1"]
SECONDS_KEYS = ["train_seconds", "train_seconds_per_epoch", "eval_seconds", "random_init_eval_seconds"]
OTHER_KEYS = ["row", "smoke", "protocol", "data", "arch", "num_patches", "bs", "lr", "schedule_epochs",
              "trained_epochs", "checkpoint", "resumed", "published_label", "test_patches", "gpu", "torch",
              "git_commit", "commands"]
TRANSFER_KEYS = ["source_row", "source_data", "target_data", "transfer"]
SMOKE_KEYS = ["smoke_data"]  # a --smoke result's own: what it ran on

# The transfer rows the project promises: {row: (source row, target data set)}.
TRANSFER = {"cifar10-30ep-to-cifar100": ("cifar10-30ep", "cifar100"),
            "cifar100-30ep-to-cifar10": ("cifar100-30ep", "cifar10"),
            "cifar10-1ep-to-cifar100": ("cifar10-1ep", "cifar100"),
            "cifar100-1ep-to-cifar10": ("cifar100-1ep", "cifar10")}


def dry_run(cli, row: str, *flags: str) -> tuple[list[str], list[str], list[str]]:
    """The main.py, evaluate.py and random-init evaluate.py argv that reproduce.py would run."""
    result = cli("scripts.reproduce", row, "--dry_run", *flags)
    assert result.returncode == 0, result.stderr
    lines = [shlex.split(line) for line in result.stdout.splitlines()]
    scripts = [Path(line[1]).resolve() for line in lines]
    assert scripts == [ROOT / "main.py", ROOT / "evaluate.py", ROOT / "evaluate.py"] and lines[0][0] == "python"
    return lines[0][2:], lines[1][2:], lines[2][2:]


class TestRows:
    def test_every_row_of_the_paper_and_no_other(self) -> None:
        assert set(ROWS) == set(PAPER)

    @pytest.mark.parametrize("name", list(PAPER))
    def test_commands_carry_the_papers_settings(self, cli, name: str) -> None:
        data, arch, patches, schedule, trained, published = PAPER[name]
        train_argv, eval_argv, baseline_argv = dry_run(cli, name)
        train = main.get_args_parser().parse_args(train_argv)
        assert (train.data, train.arch, train.num_patches, train.bs, train.lr) == (data, arch, patches, 100, 0.3)
        assert train.epoch == schedule and (train.patch_sim, train.tcr, train.eps) == (200, 1, 0.2)
        assert train.train_epochs == (trained if trained < schedule else None) and train.max_steps is None
        for argv, random_init in ((eval_argv, False), (baseline_argv, True)):
            ev = evaluate.get_args_parser().parse_args(argv)
            checkpoint = None if random_init else train.output_dir / "save_models" / f"{trained - 1}.pt"
            assert ev.ckpt == checkpoint and ev.random_init == random_init
            assert (ev.data, ev.data_dir, ev.download) == (train.data, train.data_dir, train.download)
            assert (ev.test_patches, ev.knn_k, ev.knn_t, ev.knn, ev.linear) == (128, 20, 0.07, True, True)
            assert (ev.linear_epochs, ev.linear_lr, ev.linear_momentum, ev.linear_wd, ev.linear_bs) == \
                   (100, 0.03, 0.9, 5e-5, 100)
        baseline = evaluate.get_args_parser().parse_args(baseline_argv)
        assert (baseline.arch, baseline.hidden_dim, baseline.z_dim) == (arch, train.hidden_dim, train.z_dim)
        assert ROWS[name].published == published

    def test_evaluations_read_the_data_the_training_read(self, cli, tmp_path: Path) -> None:
        """Data flags in --train_args reach both evaluations; --eval_args still override them."""
        folder = write_image_folder(tmp_path / "jpegs", splits=("train", "test"))
        data = f"--data imagefolder --data_dir {folder} --no-download"
        for eval_args, expected in (("", folder), (f"--data_dir {tmp_path / 'other'}", tmp_path / "other")):
            _, eval_argv, baseline_argv = dry_run(cli, "cifar10-1ep", "--train_args", data, "--eval_args", eval_args)
            for argv in (eval_argv, baseline_argv):
                ev = evaluate.get_args_parser().parse_args(argv)
                assert (ev.data, ev.data_dir, ev.download) == ("imagefolder", expected, False)

    def test_pass_through_flags_come_last_and_are_checked(self, cli) -> None:
        train_argv, eval_argv, _ = dry_run(cli, "cifar10-1ep", "--train_args", "--augment batched --train_subset 1000",
                                           "--eval_args", "--forward_bs 512")
        train = main.get_args_parser().parse_args(train_argv)
        assert train.augment == "batched" and train.train_subset == 1000 and train.train_epochs == 1
        assert evaluate.get_args_parser().parse_args(eval_argv).forward_bs == 512
        assert_one_line_error(cli("scripts.reproduce", "cifar10-1ep", "--dry_run", "--train_args", "--nope 1"),
                              "main.py", "--nope")

    def test_unknown_row_is_refused_with_one_line(self, cli) -> None:
        assert_one_line_error(cli("scripts.reproduce", "cifar10-2ep", "--dry_run"), "cifar10-2ep", "cifar10-1ep")


class TestWhatReproduceRefuses:
    @pytest.mark.parametrize("option,value,fragments", [
        ("--train_args", "--output_dir B", ["--train_args may not set --output_dir (B)", "reproduce.py --run_dir"]),
        ("--train_args", "--output_d=B", ["--train_args may not set --output_dir (B)", "reproduce.py --run_dir"]),
        ("--train_args", "--resume --augment batched", ["may not set --resume", "resumes the run in --run_dir"]),
        ("--train_args", "--max_steps 1", ["may not set --max_steps (1)", "before the row's checkpoint 0.pt"]),
        ("--train_args", "--epoch 30", ["may not set --epoch (30)", "that of --epoch 2 --train_epochs 1"]),
        ("--train_args", "--train_epochs 2", ["may not set --train_epochs (2)", "--epoch 2 --train_epochs 1"]),
        ("--train_args", "--device cuda:1", ["may not set --device (cuda:1)", "reproduce.py --device"]),
        ("--eval_args", "--output x.json", ["--eval_args may not set --output (x.json)", "reproduce.py --out"]),
        ("--eval_args", "--model_path x.pt", ["--eval_args may not set --ckpt (x.pt)", "the row's checkpoint"]),
        ("--eval_args", "--random_init --knn_k 10", ["may not set --random_init", "baseline"]),
        ("--train_args", "--msg 'a b", ["--train_args", "No closing quotation", "close its quotes"]),
        ("--eval_args", "--knn_k 20 \\", ["--eval_args", "No escaped character"]),
    ])
    def test_flags_reproduce_sets_itself_and_broken_quotes_are_one_line(self, cli, tmp_path: Path, option: str,
                                                                        value: str, fragments: list[str]) -> None:
        result = cli("scripts.reproduce", "cifar10-1ep", "--dry_run", "--run_dir", "A", f"{option}={value}")
        assert_one_line_error(result, *fragments)
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing trained, nothing written

    def test_the_rows_own_values_pass(self, cli) -> None:
        train_argv, _, _ = dry_run(cli, "cifar10-10ep", "--run_dir", "A", "--train_args", "--epoch 10 --output_dir A")
        train = main.get_args_parser().parse_args(train_argv)
        assert (train.epoch, train.train_epochs, train.output_dir) == (10, None, Path("A"))
        assert_one_line_error(cli("scripts.reproduce", "cifar10-10ep", "--dry_run", "--train_args=--train_epochs 9"),
                              "may not set --train_epochs (9)", "9.pt is that of --epoch 10")

    def test_a_run_without_last_pt_names_the_cp_that_continues_it(self, cli, tmp_path: Path) -> None:
        models = tmp_path / "A" / "save_models"
        models.mkdir(parents=True)
        (models / "0.pt").write_bytes(b"epoch 0")
        result = cli("scripts.reproduce", "cifar10-10ep", "--dry_run", "--run_dir", "A")
        assert_one_line_error(result, "no last.pt", "`cp A/save_models/0.pt A/save_models/last.pt`",
                              "run this command again")
        assert sorted(p.name for p in models.iterdir()) == ["0.pt"]


class TestOneEpochProtocol:
    def test_checkpoint_equals_the_first_epoch_of_an_uninterrupted_two_epoch_run(self, cli, tmp_path: Path) -> None:
        tiny = [*TINY_RUN, "--train_subset", "32", "--deterministic"]  # 32 images in batches of 16: 2 steps
        protocol = ROWS["cifar10-1ep"].schedule_flags()
        assert protocol == ["--epoch", "2", "--train_epochs", "1"]
        states = {}
        for name, flags in {"protocol": protocol, "uninterrupted": ["--epoch", "2"]}.items():
            result = cli("main", *tiny, "--output_dir", str(tmp_path / name), *flags)
            assert result.returncode == 0, result.stderr
            states[name] = torch.load(tmp_path / name / "save_models" / "0.pt", weights_only=False)
        assert not (tmp_path / "protocol" / "save_models" / "1.pt").exists()  # stopped after one epoch
        assert (tmp_path / "uninterrupted" / "save_models" / "1.pt").exists()
        ours, reference = states["protocol"]["model"], states["uninterrupted"]["model"]
        assert set(ours) == set(reference)
        for key, value in reference.items():
            assert torch.equal(ours[key], value), key
        # The cosine spans both epochs: after the first, the learning rate is half of 0.3 (a schedule
        # sized to one epoch would be at 0 there, and its second step would use 0.15, not 0.256).
        assert states["protocol"]["scheduler"]["_last_lr"][0] == pytest.approx(0.15)


class TestSmoke:
    def test_writes_a_complete_result_and_a_rerun_continues_the_run(self, cli, tmp_path: Path) -> None:
        result = cli("scripts.reproduce", "cifar10-1ep", "--smoke")
        assert result.returncode == 0, result.stderr
        path = tmp_path / "results" / "cifar10-1ep.smoke.json"
        record = json.loads(path.read_text())
        assert set(record) == set(PERCENT_KEYS + SECONDS_KEYS + OTHER_KEYS + SMOKE_KEYS)
        assert record["smoke_data"] == ("the built-in synthetic set, standing in for cifar10; cifar-kind patches of "
                                        "32 px, resnet10-cifar at hidden 64 / z 32")
        assert all(0 <= record[k] <= 100 for k in PERCENT_KEYS), record
        assert all(0 < record[k] < 600 for k in SECONDS_KEYS), record
        assert record["train_seconds_per_epoch"] == record["train_seconds"]  # one epoch trained
        assert record["smoke"] is True and record["row"] == "cifar10-1ep" and record["published_linear_top1"] == 84.2
        assert (record["data"], record["schedule_epochs"], record["trained_epochs"]) == ("synthetic", 2, 1)
        assert record["gpu"] == "cpu" and record["torch"] == torch.__version__ and record["git_commit"]
        assert record["checkpoint"].endswith("save_models/0.pt") and (tmp_path / record["checkpoint"]).is_file()
        assert "--epoch 2 --train_epochs 1" in record["commands"][0] and "--random_init" in record["commands"][2]
        assert record["test_patches"] == 2 and "epoch 1 of a 2-epoch" in record["protocol"]
        assert record["protocol"].startswith("4 patches") and record["num_patches"] == 4 and not record["resumed"]

        checkpoint = (tmp_path / record["checkpoint"]).read_bytes()
        again = cli("scripts.reproduce", "cifar10-1ep", "--smoke")  # the finished run is evaluated, not retrained
        assert again.returncode == 0, again.stderr
        assert json.loads(path.read_text())["resumed"] is True
        assert (tmp_path / record["checkpoint"]).read_bytes() == checkpoint

        changed = cli("scripts.reproduce", "cifar10-1ep", "--smoke", "--train_args", "--num_patches 6")
        assert_one_line_error(changed, "--num_patches 4 (now 6)", "--train_args", "--run_dir")
        assert (tmp_path / record["checkpoint"]).read_bytes() == checkpoint

        (tmp_path / record["checkpoint"]).unlink()  # a finished run whose row checkpoint is gone: no loop
        gone = cli("scripts.reproduce", "cifar10-1ep", "--smoke")
        assert_one_line_error(gone, "training ended without", "cannot be written again", "pass a new --run_dir")

    def test_a_stopped_training_is_not_evaluated_and_the_same_command_continues_it(
            self, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A SIGTERM after the first of the epoch's two steps: main.py saves last.pt and stops, and
        reproduce.py ends with 143 and one line, without evaluating; run again, it resumes and evaluates."""
        sigterm_after_first_step(monkeypatch)
        command = ["scripts.reproduce", "cifar10-1ep", "--smoke", "--train_args", "--train_subset 32 --log_every 1"]
        stopped = cli(*command)
        assert stopped.returncode == 143, stopped.stderr
        assert "SIGTERM: stopped at step 1" in stopped.stdout and "done:" not in stopped.stdout
        assert stopped.stderr.strip().splitlines()[-1].startswith("reproduce: SIGTERM stopped the training")
        run = tmp_path / "logs/reproduce/cifar10-1ep-smoke/save_models"
        assert torch.load(run / "last.pt", weights_only=False)["step"] == 1 and not (run / "0.pt").exists()
        assert not list(run.glob("*.eval.json")) and not (tmp_path / "results").exists()

        again = cli(*command)
        assert again.returncode == 0, again.stderr
        record = json.loads((tmp_path / "results" / "cifar10-1ep.smoke.json").read_text())
        assert record["resumed"] is True and (run / "0.eval.json").is_file()

    def test_torchvisions_cifar_folder_reaches_training_and_evaluation(self, cli, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
        """CIFAR-10 as torchvision stores it, without a download: both evaluations read it too."""
        monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)  # not CIFAR's md5
        folder = write_cifar_batches(tmp_path / "cifar", train_per_class=4, test_per_class=2)
        result = cli("scripts.reproduce", "cifar10-1ep", "--smoke",
                     "--train_args", f"--data cifar10 --data_dir {folder} --no-download")
        assert result.returncode == 0, result.stderr
        record = json.loads((tmp_path / "results" / "cifar10-1ep.smoke.json").read_text())
        assert record["data"] == "cifar10"
        for name in ("0.eval.json", "0.random_init.eval.json"):
            evaluation = json.loads((tmp_path / "logs/reproduce/cifar10-1ep-smoke/save_models" / name).read_text())
            assert (evaluation["data"], evaluation["data_dir"]) == ("cifar10", str(folder))
            assert evaluation["train_images"] == 20 and evaluation["test_images"] == 20


# The ImageNet-kind rows' --smoke: {row: (backbone, the generated images' sizes in the result's words)}.
IMAGENET_KIND = {"tinyimagenet-1ep": ("resnet18-tinyimagenet", "64×64"),
                 "tinyimagenet-200p-10ep": ("resnet18-tinyimagenet", "64×64"),
                 "imagenet100-1ep": ("resnet18-imagenet", "400×350 and 375×500"),
                 "imagenet100-200p-10ep": ("resnet18-imagenet", "400×350 and 375×500")}


class TestImageNetKindSmoke:
    """The smoke of a Tiny ImageNet or ImageNet-100 row cuts ImageNet-kind patches from a generated folder
    of the row's image sizes with the row's backbone; each of the four runs end to end (seconds each:
    the ten-epoch rows train ten steps of one image batch)."""

    @pytest.mark.parametrize("name", list(IMAGENET_KIND))
    def test_the_commands_train_and_evaluate_the_rows_backbone_on_a_generated_folder(self, cli, name: str) -> None:
        train_argv, eval_argv, baseline_argv = dry_run(cli, name, "--smoke")
        train = main.get_args_parser().parse_args(train_argv)
        folder = Path(f"logs/reproduce/{name}-smoke/smoke_data")
        assert (train.data, train.data_dir, train.arch) == ("imagefolder", folder, IMAGENET_KIND[name][0])
        assert (train.patch_size, train.patch_kind, train.hidden_dim, train.z_dim) == (64, None, 64, 32)
        assert train.epoch == ROWS[name].schedule_epochs and train.device == "cpu"
        for argv in (eval_argv, baseline_argv):
            ev = evaluate.get_args_parser().parse_args(argv)
            assert (ev.data, ev.data_dir) == ("imagefolder", folder)
        baseline = evaluate.get_args_parser().parse_args(baseline_argv)
        assert (baseline.arch, baseline.patch_size) == (IMAGENET_KIND[name][0], 64)  # the checkpoint's patches
        assert not folder.exists()  # --dry_run writes nothing

    @pytest.mark.parametrize("name", list(IMAGENET_KIND))
    def test_the_chain_runs_on_imagenet_kind_patches(self, cli, tmp_path: Path, name: str) -> None:
        result = cli("scripts.reproduce", name, "--smoke")
        assert result.returncode == 0, result.stderr
        run = tmp_path / f"logs/reproduce/{name}-smoke"
        sizes = IMAGENET_KIND[name][1]
        assert result.stdout.count("patches: imagenet kind, 64 px") == 3  # training, checkpoint, random init
        assert f"from the images of {run.relative_to(tmp_path)}/smoke_data/train: " in result.stdout
        record = json.loads((tmp_path / "results" / f"{name}.smoke.json").read_text())
        assert set(record) == set(PERCENT_KEYS + SECONDS_KEYS + OTHER_KEYS + SMOKE_KEYS)
        assert (record["data"], record["arch"], record["smoke"]) == ("imagefolder", IMAGENET_KIND[name][0], True)
        assert f"a generated image folder of {ROWS[name].data}'s image sizes ({sizes};" in record["smoke_data"]
        assert f"standing in for {ROWS[name].data}; imagenet-kind patches of 64 px" in record["smoke_data"]
        stem = Path(ROWS[name].checkpoint).stem  # 0 for the one-epoch rows, 9 for the ten-epoch ones
        for evaluation in (f"{stem}.eval.json", f"{stem}.random_init.eval.json"):
            done = json.loads((run / "save_models" / evaluation).read_text())
            assert (done["patch_kind"], done["patch_size"], done["train_images"], done["test_images"]) == \
                   ("imagenet", 64, 16, 8)
        trained = json.loads((run / "args.json").read_text())["args"]
        assert (trained["patch_kind"], trained["patch_size"]) == ("imagenet", 64)
        images = sorted((run / "smoke_data").rglob("*.png"))
        assert len(images) == 24 and {Image.open(p).size for p in images} == set(SMOKE_FOLDERS[ROWS[name].data])

        stamps = [p.stat().st_mtime_ns for p in images]
        again = cli("scripts.reproduce", name, "--smoke")  # the finished run: evaluations reused, data untouched
        assert again.returncode == 0, again.stderr
        assert [p.stat().st_mtime_ns for p in images] == stamps

    def test_the_folder_is_the_same_on_every_write(self, tmp_path: Path) -> None:
        for root in (tmp_path / "a", tmp_path / "b"):
            write_smoke_folder(root, SMOKE_FOLDERS["imagenet100"])
        files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
        assert [str(p) for p in files[:2]] == ["train/class0/0.png", "train/class0/13.png"]
        assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in files)
        assert len({(tmp_path / "a" / p).read_bytes() for p in files}) == 24  # 24 different images


class TestTransferRows:
    @pytest.mark.parametrize("name", list(TRANSFER))
    def test_the_source_rows_training_then_both_evaluations_on_the_target(self, cli, name: str) -> None:
        """--dry_run prints the source row's own training command (same run folder), then the trained
        checkpoint and the random init evaluated on the target in --target_data_dir, official protocol."""
        source, target = TRANSFER[name]
        train_argv, eval_argv, baseline_argv = dry_run(cli, name, "--data_dir", "src", "--target_data_dir", "tgt")
        assert train_argv == dry_run(cli, source, "--data_dir", "src")[0]
        train = main.get_args_parser().parse_args(train_argv)
        assert train.output_dir == Path("logs/reproduce") / source and train.data_dir == Path("src")
        checkpoint = train.output_dir / "save_models" / ROWS[source].checkpoint
        for argv, random_init in ((eval_argv, False), (baseline_argv, True)):
            ev = evaluate.get_args_parser().parse_args(argv)
            assert (ev.data, ev.data_dir, ev.random_init) == (target, Path("tgt"), random_init)
            assert ev.ckpt == (None if random_init else checkpoint)
            assert (ev.test_patches, ev.knn_k, ev.knn_t, ev.linear_epochs, ev.linear_lr) == (128, 20, 0.07, 100, 0.03)
            kind = ".random_init" if random_init else ""
            assert ev.output == checkpoint.with_name(f"{checkpoint.stem}.to-{target}{kind}.eval.json")
        default = evaluate.get_args_parser().parse_args(dry_run(cli, name, "--data_dir", "src")[1])
        assert default.data_dir == Path("src")  # the target beside the source, as torchvision keeps both CIFARs
        assert TRANSFER_ROWS[name].published is None and name not in ROWS

    def test_target_data_dir_is_refused_for_a_row_of_the_paper(self, cli) -> None:
        result = cli("scripts.reproduce", "cifar10-1ep", "--dry_run", "--target_data_dir", "tgt")
        assert_one_line_error(result, "--target_data_dir is for transfer rows", "drop it")

    def test_smoke_trains_the_source_once_then_reuses_its_checkpoint(self, cli, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        result = cli("scripts.reproduce", "cifar10-1ep-to-cifar100", "--smoke")
        assert result.returncode == 0, result.stderr
        assert "main.py" in result.stdout.split("evaluate.py")[0]  # the source row trained first
        path = tmp_path / "results" / "cifar10-1ep-to-cifar100.smoke.json"
        record = json.loads(path.read_text())
        assert set(record) == set(PERCENT_KEYS + SECONDS_KEYS + OTHER_KEYS + TRANSFER_KEYS + SMOKE_KEYS)
        assert record["published_linear_top1"] is None and "no transfer result" in record["published_label"]
        assert (record["source_row"], record["source_data"], record["target_data"]) == \
               ("cifar10-1ep", "synthetic", "synthetic")
        assert "standing in for cifar100" in record["transfer"] and record["smoke"] is True
        assert all(0 <= record[k] <= 100 for k in PERCENT_KEYS[1:]) and record["train_seconds"] > 0
        run = tmp_path / "logs/reproduce/cifar10-1ep-smoke/save_models"  # the source row's own --smoke run folder
        assert record["checkpoint"] == "logs/reproduce/cifar10-1ep-smoke/save_models/0.pt"
        for name in ("0.to-cifar100.eval.json", "0.to-cifar100.random_init.eval.json"):
            assert json.loads((run / name).read_text())["data"] == "synthetic"
        assert "--random_init" in record["commands"][2] and "0.to-cifar100" in record["commands"][1]

        before = ((run / "0.pt").read_bytes(), (run / "0.pt").stat().st_mtime_ns)

        def no_training(args) -> None:
            raise AssertionError("main.py ran again")

        monkeypatch.setattr(main, "main", no_training)
        again = cli("scripts.reproduce", "cifar10-1ep-to-cifar100", "--smoke")
        assert again.returncode == 0, again.stderr
        assert "reusing logs/reproduce/cifar10-1ep-smoke/save_models/0.pt" in again.stdout
        assert "main.py" not in again.stdout.split("results:")[0]
        assert ((run / "0.pt").read_bytes(), (run / "0.pt").stat().st_mtime_ns) == before
        second = json.loads(path.read_text())
        assert second["train_seconds"] == 0 and second["knn_top1"] == record["knn_top1"]
        assert json.loads(path.with_name(path.name + ".1").read_text()) == record  # the first kept
