"""scripts/sweep.py: the presets' commands, the whole chain at --smoke size (its result file, its plot,
a second call that redoes nothing, a stopped sweep that continues), what it refuses; and the training
seconds that main.py keeps in every checkpoint, which the sweep reads."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_RUN, assert_one_line_error, sigterm_after_first_step
from PIL import Image

import evaluate
import main
from plumbing.cli import run_cli
from scripts import sweep

# Written from the issue, not from scripts/sweeps.py: {preset: {run: (main.py flags, epochs evaluated)}}.
EQUAL_32 = {2: (4, 8, 16), 4: (2, 4, 8), 8: (1, 2, 4), 16: (1, 2), 32: (1,)}  # at 8, 16, 32 patch-epochs
EQUAL_200 = {2: (10, 20, 50, 100), 5: (4, 8, 20, 40), 10: (2, 4, 10, 20), 20: (1, 2, 5, 10), 50: (2, 4),
             100: (1, 2), 200: (1,)}  # at 20, 40, 100, 200 patch-epochs
SCALES = {f"p{p}-scale{str(s).replace('/', '-')}": ({"num_patches": p, "crop_scale": float(s), "epoch": 10},
                                                    (1, 2, 5, 10))
          for p, s in [(20, Fraction(1, 16)), (20, Fraction(1, 8)), (20, Fraction(1, 4)), (20, Fraction(1, 2)),
                       (20, Fraction(1)), (5, Fraction(1)), (10, Fraction(1, 2)), (40, Fraction(1, 8)),
                       (80, Fraction(1, 16))]}
PRESETS = {
    "patches-cpu": {f"p{p}": ({"num_patches": p, "epoch": 32 // p}, at) for p, at in EQUAL_32.items()},
    "patches-cifar10": {f"p{p}": ({"num_patches": p, "epoch": 10}, tuple(range(1, 11)))
                        for p in (2, 5, 10, 20, 50, 100, 200)},
    "budget-cifar10": {f"p{p}": ({"num_patches": p, "epoch": 200 // p}, at) for p, at in EQUAL_200.items()},
    "cropscale-cifar10": SCALES,
    "objective-cifar10": {f"{loss}-p{p}": ({"num_patches": p, "loss": loss, "epoch": 10}, tuple(range(1, 11)))
                          for loss in ("emp", "vicreg") for p in (2, 20)},
}
PAPER = {"data": "cifar10", "arch": "resnet18-cifar", "bs": 100, "lr": 0.3, "optimizer": "lars"}
CPU = {"data": "imagefolder", "arch": "resnet10-cifar", "bs": 100, "lr": 0.3, "optimizer": "lars",
       "train_subset": 5000, "data_dir": Path("data/cifar10-slice")}
EPOCH_KEYS = {"epoch", "train_seconds", "patches_seen", "knn_top1", "linear_top1"}


def dry_run(cli, *argv: str) -> tuple[list[list[str]], list[list[str]], str]:
    """(main.py argvs, evaluate.py argvs, the patch-budget line) that sweep.py --dry_run prints."""
    result = cli("scripts.sweep", *argv, "--dry_run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    commands = [shlex.split(line) for line in lines[:-1]]
    assert all(line[0] == "python" for line in commands) and lines[-1].startswith("# patch budget: ")
    scripts = [Path(line[1]).resolve() for line in commands]
    assert set(scripts) <= {ROOT / "main.py", ROOT / "evaluate.py"}
    trains = [line[2:] for line, script in zip(commands, scripts) if script == ROOT / "main.py"]
    evals = [line[2:] for line, script in zip(commands, scripts) if script == ROOT / "evaluate.py"]
    return trains, evals, lines[-1]


class TestPresets:
    @pytest.mark.parametrize("name", list(PRESETS))
    def test_dry_run_prints_every_command_and_trains_nothing(self, cli, tmp_path: Path, name: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(main, "main", lambda args: pytest.fail("trained"))
        monkeypatch.setattr(evaluate, "main", lambda args: pytest.fail("evaluated"))
        trains, evals, budget = dry_run(cli, name)
        expected = PRESETS[name]
        assert len(trains) == len(expected) and len(evals) == sum(len(at) for _, at in expected.values())
        remaining = list(evals)
        for argv, (run, (own, at)) in zip(trains, expected.items()):
            train = main.get_args_parser().parse_args(argv)
            assert train.output_dir == Path("logs/sweep") / name / run and not train.resume
            assert {key: getattr(train, key) for key in own} == own
            assert train.train_epochs is None and train.max_steps is None  # the cosine spans the run's own length
            settings = CPU if name == "patches-cpu" else PAPER
            assert {key: getattr(train, key) for key in settings} == settings
            for epoch in at:
                ev = evaluate.get_args_parser().parse_args(remaining.pop(0))
                assert ev.ckpt == train.output_dir / "save_models" / f"{epoch - 1}.pt"
                assert ev.output == ev.ckpt.with_suffix(".eval.json")
                assert ev.data is None and ev.data_dir is None  # evaluate.py reads the checkpoint's: the training's
                assert ev.knn and ev.linear
                assert (ev.knn_k, ev.knn_t) == (20, 0.07) and ev.test_patches == (8 if name == "patches-cpu" else 32)
        total = sum(flags["num_patches"] * flags["epoch"] for flags, _ in expected.values())
        assert budget.startswith(f"# patch budget: {total} patch-epochs")
        assert not (tmp_path / "logs").exists() and not (tmp_path / "results").exists()

    def test_patches_cpu_is_an_equal_budget_and_reads_cifar10_too(self, cli) -> None:
        trains, evals, budget = dry_run(cli, "patches-cpu")
        runs = [main.get_args_parser().parse_args(argv) for argv in trains]
        assert {run.num_patches * run.epoch for run in runs} == {32} and {run.train_subset for run in runs} == {5000}
        assert "160 patch-epochs" in budget and "800,000 patches" in budget
        ev = evaluate.get_args_parser().parse_args(evals[0])
        assert (ev.train_subset, ev.test_subset, ev.test_patches, ev.linear_epochs) == (5000, 1000, 8, 100)
        trains, evals, _ = dry_run(cli, "patches-cpu", "--data_dir", "D", "--train_args", "--data cifar10",
                                   "--eval_args", "--data_dir E")
        train, ev = main.get_args_parser().parse_args(trains[0]), evaluate.get_args_parser().parse_args(evals[0])
        assert (train.data, train.data_dir, train.train_subset) == ("cifar10", Path("D"), 5000)
        assert (ev.data_dir, ev.train_subset, ev.test_subset) == (Path("E"), 5000, 1000)

    def test_help_lists_every_preset_with_its_description(self, cli) -> None:
        result = cli("scripts.sweep", "--help")
        assert result.returncode == 0
        text = " ".join(result.stdout.split())
        for name in PRESETS:
            assert f" {name} " in text
        assert "800,000 patches" in text and "20 min on 2 quiet CPU cores" in text and "vicreg" in text


class TestRefusals:
    def test_an_unknown_preset_is_one_line(self, cli) -> None:
        result = cli("scripts.sweep", "patches-gpu", "--dry_run")
        assert result.returncode == 2
        assert_one_line_error(result, "unknown sweep 'patches-gpu'", "patches-cpu")

    @pytest.mark.parametrize("option,value,fragments", [
        ("--train_args", "--num_patches 3", ["--train_args may not set --num_patches (3)", "p2: --num_patches 2"]),
        ("--train_args", "--epoch=5", ["--train_args may not set --epoch (5)", "the preset sets it"]),
        ("--train_args", "--output_dir X", ["may not set --output_dir (X)", "sweep.py --run_root"]),
        ("--train_args", "--resume", ["may not set --resume", "continues each run by itself"]),
        ("--train_args", "--max_steps 1", ["may not set --max_steps (1)", "whole schedule"]),
        ("--train_args", "--train_epochs 1", ["may not set --train_epochs (1)", "whole schedule"]),
        ("--eval_args", "--output x.json", ["--eval_args may not set --output (x.json)", "--out"]),
        ("--eval_args", "--model_path x.pt", ["--eval_args may not set --ckpt (x.pt)", "evaluate.py itself"]),
        ("--train_args", "--nope 1", ["main.py", "--nope"]),
    ])
    def test_flags_the_sweep_sets_are_refused_in_one_line(self, cli, tmp_path: Path, option: str, value: str,
                                                          fragments: list[str]) -> None:
        result = cli("scripts.sweep", "patches-cpu", f"{option}={value}")
        assert result.returncode == 2
        assert_one_line_error(result, *fragments)
        assert list(tmp_path.iterdir()) == []  # refused before anything ran or was written


def run_sweep(folder: Path, *argv: str) -> int:
    """sweep.py argv from folder, in this process; its exit status."""
    here = Path.cwd()
    os.chdir(folder)
    try:
        run_cli(sweep.main, sweep.get_args_parser(), list(argv))
        return 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where `sweep.py patches-cpu --smoke` ran once: 2 runs × 2 epochs, 4 evaluations."""
    folder = tmp_path_factory.mktemp("sweep")
    assert run_sweep(folder, "patches-cpu", "--smoke") == 0
    return folder


def fresh_copy(smoke: Path, tmp_path: Path) -> Path:
    """The smoke folder copied into this test's tmp_path (file times kept)."""
    shutil.copytree(smoke, tmp_path, dirs_exist_ok=True)
    return tmp_path


def counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[list[str]]]:
    """Wrap main.main and evaluate.main: {entry: the checkpoint or run folder of every call}."""
    calls: dict[str, list[str]] = {"main": [], "evaluate": []}
    for module, key in ((main, "main"), (evaluate, "evaluate")):
        original = module.main

        def wrapped(args, original=original, key=key):
            calls[key].append(str(args.output_dir if key == "main" else args.ckpt))
            return original(args)

        monkeypatch.setattr(module, "main", wrapped)
    return calls


def snapshot(folder: Path) -> dict[str, int]:
    """{path: mtime_ns} of every checkpoint, evaluation and TensorBoard file under folder/logs."""
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in (folder / "logs").rglob("*")
            if path.is_file() and (path.suffix == ".pt" or path.name.endswith(".eval.json") or "tfevents" in path.name)}


class TestSmoke:
    def test_the_result_file_holds_every_curve(self, smoke: Path) -> None:
        record = json.loads((smoke / "results" / "patches-cpu.smoke.json").read_text())
        assert record["sweep"] == "patches-cpu" and record["smoke"] is True
        assert record["env"]["device"] == "cpu" and record["env"]["torch"] == torch.__version__
        assert record["env"]["commit"]
        assert (record["eval"]["test_patches"], record["eval"]["knn_k"], record["eval"]["linear_epochs"]) == (2, 20, 3)
        assert [run["name"] for run in record["runs"]] == ["p2", "p32"]
        for run, patches in zip(record["runs"], (2, 4)):
            assert run["flags"]["num_patches"] == patches and run["flags"]["epoch"] == 2
            assert run["flags"]["data"] == "synthetic" and run["flags"]["train_subset"] == 16
            points = run["epochs"]
            assert EPOCH_KEYS <= set(points[0]) and [p["epoch"] for p in points] == [1, 2]
            assert 0 < points[0]["train_seconds"] < points[1]["train_seconds"] < 300
            assert [p["patches_seen"] for p in points] == [patches * 16 * 1, patches * 16 * 2]  # P · images · epoch
            assert all(0 <= p[key] <= 100 for p in points for key in ("knn_top1", "linear_top1"))
            evaluation = json.loads((smoke / run["run_dir"] / "save_models" / "1.eval.json").read_text())
            assert (evaluation["data"], evaluation["train_images"], evaluation["test_images"]) == ("synthetic", 20, 20)
            saved = torch.load(smoke / run["run_dir"] / "save_models" / "1.pt", weights_only=False)
            assert points[1]["train_seconds"] == saved["train_seconds"]
            assert not list((smoke / run["run_dir"]).rglob("*.features"))  # the evaluated features are not kept
            events = list((smoke / run["run_dir"]).glob(f"{sweep.CURVES}/events.out.tfevents.*"))
            assert len(events) == 1 and events[0].stat().st_size > 0

    def test_the_plot_is_a_png(self, smoke: Path) -> None:
        path = smoke / "results" / "patches-cpu.smoke.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
        with Image.open(path) as image:
            assert image.width >= 800 and image.height >= 300
            colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is not None and len(colours) > 50  # lines, text and a legend, not a blank canvas

    def test_a_second_call_redoes_nothing_and_keeps_the_first_result(self, smoke: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
        folder = fresh_copy(smoke, tmp_path)
        first = (folder / "results" / "patches-cpu.smoke.json").read_text()
        before, calls = snapshot(folder), counting(monkeypatch)
        assert run_sweep(folder, "patches-cpu", "--smoke") == 0
        assert calls == {"main": [], "evaluate": []} and snapshot(folder) == before
        assert (folder / "results" / "patches-cpu.smoke.json.1").read_text() == first
        again = json.loads((folder / "results" / "patches-cpu.smoke.json").read_text())
        assert [run["epochs"] for run in again["runs"]] == [run["epochs"] for run in json.loads(first)["runs"]]

    def test_without_matplotlib_the_result_file_is_written_and_one_line_says_so(
            self, smoke: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
        folder = fresh_copy(smoke, tmp_path)
        (folder / "results" / "patches-cpu.smoke.png").unlink()
        (folder / "results" / "patches-cpu.smoke.json").unlink()
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails as if it were missing
        capsys.readouterr()
        assert run_sweep(folder, "patches-cpu", "--smoke") == 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "matplotlib is not installed" in err[0] and "pip install matplotlib" in err[0]
        assert json.loads((folder / "results" / "patches-cpu.smoke.json").read_text())["runs"]
        assert not (folder / "results" / "patches-cpu.smoke.png").exists()

    def test_a_stopped_sweep_continues_where_it_stopped(self, smoke: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
        """The second run stopped by a SIGTERM after its first step (the end of its first epoch): the
        sweep ends with 143 without evaluating it; the same command then trains its second epoch only."""
        folder = fresh_copy(smoke, tmp_path)
        shutil.rmtree(folder / "logs/sweep/patches-cpu-smoke/p32")
        sigterm_after_first_step(monkeypatch)
        capsys.readouterr()
        assert run_sweep(folder, "patches-cpu", "--smoke") == 143
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("sweep: SIGTERM stopped the training of p32")
        models = folder / "logs/sweep/patches-cpu-smoke/p32/save_models"
        assert sorted(path.name for path in models.iterdir() if not path.name.startswith(".")) == ["0.pt", "last.pt"]
        kept = (models / "0.pt").read_bytes()

        calls = counting(monkeypatch)
        time.sleep(0.01)
        assert run_sweep(folder, "patches-cpu", "--smoke") == 0
        assert calls["main"] == ["logs/sweep/patches-cpu-smoke/p32"]  # p2 is finished: not trained again
        assert calls["evaluate"] == [str(models.relative_to(folder) / name) for name in ("0.pt", "1.pt")]
        assert (models / "0.pt").read_bytes() == kept  # continued, not trained afresh
        record = json.loads((folder / "results" / "patches-cpu.smoke.json").read_text())
        first, second = record["runs"][1]["epochs"]
        assert first["train_seconds"] < second["train_seconds"] and second["step"] == 2


class TestTrainSeconds:
    def test_every_epoch_checkpoint_holds_them_and_a_resumed_run_continues_its_clock(self, cli,
                                                                                     tmp_path: Path) -> None:
        tiny = [*TINY_RUN, "--epoch", "2", "--output_dir", "run"]  # 64 images in batches of 16: 4 steps an epoch
        assert cli("main", *tiny, "--max_steps", "4").returncode == 0  # stops at the end of epoch 0
        models = tmp_path / "run" / "save_models"
        first = torch.load(models / "0.pt", weights_only=False)["train_seconds"]
        assert not (models / "1.pt").exists() and 0 < first
        assert cli("main", *tiny, "--resume").returncode == 0
        assert torch.load(models / "0.pt", weights_only=False)["train_seconds"] == first
        second = torch.load(models / "1.pt", weights_only=False)["train_seconds"]
        assert second > first  # epoch 1's steps added to epoch 0's, not counted from 0 again
        assert torch.load(models / "last.pt", weights_only=False)["train_seconds"] == second

    def test_saves_are_not_counted(self, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each mid-epoch last.pt (--save_every_steps 1) takes 3 s more: the epoch's seconds exceed the
        seconds of its 2 steps by less than one such save (data loading and reads of the step values)."""
        import engine
        from plumbing import checkpoint
        save, step, stepping = checkpoint.save_checkpoint, engine.train_step, []

        def slow_save(state, path):
            time.sleep(3.0 if path.name == "last.pt" else 0.0)
            save(state, path)

        def timed_step(*args, **kwargs):
            tick = time.perf_counter()
            stats = step(*args, **kwargs)
            stepping.append(time.perf_counter() - tick)
            return stats

        monkeypatch.setattr(checkpoint, "save_checkpoint", slow_save)
        monkeypatch.setattr(engine, "train_step", timed_step)
        tiny = [*TINY_RUN, "--train_subset", "32", "--epoch", "1", "--save_every_steps", "1", "--output_dir", "run"]
        assert cli("main", *tiny).returncode == 0
        seconds = torch.load(tmp_path / "run/save_models/0.pt", weights_only=False)["train_seconds"]
        assert len(stepping) == 2 and sum(stepping) < seconds < sum(stepping) + 3.0

    def test_a_checkpoint_from_before_the_clock_reads_as_unknown(self, tmp_path: Path) -> None:
        path = tmp_path / "0.pt"
        torch.save({"model": {}, "step": 3, "args": {"bs": 10, "num_patches": 4}}, path)
        assert sweep.checkpoint_facts(path) == {"step": 3, "train_seconds": None, "patches_seen": 120}
