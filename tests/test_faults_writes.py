"""Writes that fail end in one line and lose nothing: a full disk, a read-only folder and a path that
is a file, for every entry point (plumbing/files.py), checked before the work where they can be.

A full disk is a size-limited tmpfs and a read-only folder a read-only bind mount, where this process
may mount (root); elsewhere torch.save raises what it raises on a full disk, chmod 0o555 makes a
folder read-only (it binds every user but root), and as root without mounts the writes under the
folder are refused with EROFS.
"""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import pathlib
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error
from test_results_table import RESULT, cells

import evaluate
from features import cached_features
from model import Encoder
from plumbing.checkpoint import save_checkpoint
from plumbing.files import TensorBoard, failure_cause

FULL_DISK = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2452160 vs 2452056")
TORCH_FULL = "the disk is full or the file could not be written"
READ_ONLY = ("Read-only file system", "Permission denied")  # a read-only mount; chmod 0o555 as another user
ARCH = ["--arch", "resnet10-cifar", "--hidden_dim", "16", "--z_dim", "8"]
QUICK_EVAL = ["--train_subset", "20", "--test_subset", "10", "--test_patches", "2", "--workers", "0",
              "--device", "cpu", "--linear_epochs", "2"]


def mount(args: list[str]) -> bool:
    """Run `mount args…`; whether it worked (it needs root and a kernel that lets this process mount)."""
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(["mount", *args], capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.fixture
def mounts():
    """The folders mounted by a test, unmounted (in reverse) when it ends, whatever happened."""
    folders: list[Path] = []
    yield folders
    for folder in reversed(folders):
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def small_disk(mounts: list[Path], monkeypatch: pytest.MonkeyPatch):
    """small_disk(folder, size, saves) → folder, on a tmpfs of `size` where mounting works; else a
    torch.save that writes `saves` files, then writes part of the next and raises what torch.save
    raises on a full disk."""

    def make(folder: Path, size: str, saves: int = 0) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if mount(["-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]):
            mounts.append(folder)
            return folder
        save, done = torch.save, []

        def full(obj: object, path: Path, *args: object, **kwargs: object) -> None:
            if len(done) < saves:
                done.append(path)
                return save(obj, path, *args, **kwargs)
            Path(path).write_bytes(b"partial")
            raise FULL_DISK

        monkeypatch.setattr(torch, "save", full)
        return folder

    return make


@pytest.fixture
def read_only(mounts: list[Path], monkeypatch: pytest.MonkeyPatch):
    """read_only(folder): the existing folder (contents kept) made read-only until the test ends."""
    made: list[Path] = []

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            folder.chmod(0o555)
            made.append(folder)
        elif mount(["--bind", str(folder), str(folder)]):
            mounts.append(folder)
            if not mount(["-o", "remount,bind,ro", str(folder)]):
                pytest.fail("a bind mount that cannot be remounted read-only")
        else:
            refuse_writes_under(monkeypatch, folder)
        return folder

    yield make
    for folder in made:
        folder.chmod(0o755)


def refuse_writes_under(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Python's file writes and folder creation under folder raise EROFS, as on a read-only mount."""
    opened, mkdir = builtins.open, pathlib.Path.mkdir

    def inside(path: object) -> bool:
        return Path(os.path.abspath(os.fspath(path))).is_relative_to(folder.resolve())

    def refuse(path: object) -> OSError:
        return OSError(errno.EROFS, "Read-only file system", os.fspath(path))

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") and inside(file):
            raise refuse(file)
        return opened(file, mode, *args, **kwargs)

    def guarded_mkdir(self, *args, **kwargs):
        if inside(self) and not self.is_dir():
            raise refuse(self)
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)  # pathlib's
    monkeypatch.setattr(pathlib.Path, "mkdir", guarded_mkdir)


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def checkpoint(folder: Path, arch: str = "resnet10-cifar", hidden: int = 16) -> Path:
    """One of our checkpoints of an untrained encoder, trained on `synthetic`."""
    torch.manual_seed(0)
    path = folder / "0.pt"
    save_checkpoint({"model": Encoder(arch, hidden, 8).state_dict(), "epoch": 0, "step": 1,
                     "args": {"data": "synthetic", "data_dir": "data", "arch": arch, "hidden_dim": hidden,
                              "z_dim": 8}}, path)
    return path


def leftovers(folder: Path) -> list[Path]:
    return list(folder.rglob(".*.tmp*"))


class TestTheCause:
    def test_each_fault_in_words(self, tmp_path: Path) -> None:
        blocker = a_file(tmp_path)
        assert failure_cause(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) == "No space left on device"
        assert failure_cause(OSError(errno.EROFS, os.strerror(errno.EROFS))) == "Read-only file system"
        assert failure_cause(FULL_DISK) == TORCH_FULL
        for path in (blocker, blocker / "below" / "x.json"):
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                assert failure_cause(err) == f"{blocker} is a file, not a folder"
            else:
                pytest.fail(f"{path} was created")
        with pytest.raises(RuntimeError) as raised:
            torch.save({}, tmp_path)
        assert failure_cause(raised.value) == "Is a directory"


class TestFullDisk:
    def test_training_stops_with_one_line_and_last_pt_intact(self, cli, tmp_path: Path, small_disk) -> None:
        """The issue's command: 0.pt (10 MB) fits in 12 MB, the save at --max_steps 3 does not."""
        run = small_disk(tmp_path / "disk", "12m", saves=1) / "run"
        flags = ["--data", "synthetic", "--arch", "resnet10-cifar", "--hidden_dim", "64", "--z_dim", "32", "--bs",
                 "8", "--num_patches", "4", "--epoch", "2", "--max_steps", "3", "--device", "cpu", "--workers", "0",
                 "--train_subset", "16", "--output_dir", str(run)]
        result = cli("main", *flags)
        assert_one_line_error(result, "cannot write", str(run / "save_models"), TORCH_FULL, "intact", "--resume")
        last = torch.load(run / "save_models" / "last.pt", weights_only=False)
        assert last["step"] == 2 and last["epoch"] == 0 and not leftovers(run)

    def test_the_feature_cache_warns_and_the_features_are_kept(self, tmp_path: Path, small_disk, capsys) -> None:
        folder = small_disk(tmp_path / "disk", "256k")
        computed = torch.randn(1000, 128), torch.arange(1000)  # 0.5 MB
        (features, labels), hit = cached_features(folder / "x.features", {"split": "train"}, lambda: computed)
        assert not hit and features is computed[0] and labels is computed[1]
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("warning: could not cache features at"), err
        assert TORCH_FULL in err[0] and "kept in memory" in err[0]
        assert list(folder.iterdir()) == []

    def test_export_says_so_in_one_line_and_leaves_nothing(self, cli, tmp_path: Path, small_disk) -> None:
        source = checkpoint(tmp_path, "resnet18-cifar", 32)  # 45 MB of weights
        out = small_disk(tmp_path / "disk", "1m") / "backbone.pt"
        result = cli("scripts.export", "--ckpt", str(source), "--out", str(out))
        assert_one_line_error(result, f"cannot write {out}", TORCH_FULL, "--out")
        assert list(out.parent.iterdir()) == []

    def test_evaluate_prints_every_number_when_its_result_cannot_be_written(
            self, cli, tmp_path: Path, mounts: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
        """The disk fills while the probes run (after the outputs were checked): TensorBoard warns,
        the result goes to stdout, and the one line says where it could not go."""
        source = checkpoint(tmp_path / "run")
        disk = tmp_path / "disk"
        disk.mkdir()
        real = mount(["-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)])
        mounts.extend([disk] if real else [])
        probes = evaluate.run_probes

        def then_the_disk_fills(*args, **kwargs):
            results = probes(*args, **kwargs)
            if real:
                with open(disk / "filler", "wb", buffering=0) as filler, pytest.raises(OSError):
                    while True:
                        filler.write(bytes(4096))
            else:
                def full(path: Path, write: object) -> None:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                monkeypatch.setattr("plumbing.files.atomic_write", full)
            return results

        monkeypatch.setattr(evaluate, "run_probes", then_the_disk_fills)
        output = disk / "out.json"
        result = cli("evaluate", "--ckpt", str(source), *QUICK_EVAL, "--output", str(output))
        assert_one_line_error(result, f"cannot write {output}", "No space left on device", "printed above",
                              "--output")
        printed = json.loads(result.stdout[result.stdout.index("{\n"):])
        assert printed["weights"] and 0 <= printed["knn"]["top1"] <= 100 and len(
            printed["linear"]["test_top1_per_epoch"]) == 2
        assert not output.exists() and not leftovers(disk)


class TestTensorBoard:
    def test_a_full_disk_is_one_warning_and_no_traceback(self, tmp_path: Path, mounts: list[Path], capfd,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
        """The events are written by TensorBoard's own thread: its fault comes back at a later call."""
        folder = tmp_path / "disk"
        folder.mkdir()
        if mount(["-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)]):
            mounts.append(folder)
        else:
            def full(self, data: bytes) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            monkeypatch.setattr("tensorboard.summary.writer.record_writer.RecordWriter.write", full)
        with TensorBoard(folder / "tb", "going on") as writer:
            for step in range(20000):
                writer.add_scalar("x", float(step), step)
                if step % 500 == 0:
                    writer.flush()
        err = capfd.readouterr().err
        assert err.count("warning: cannot write TensorBoard events in") == 1 and "Traceback" not in err, err
        assert "No space left on device" in err and "going on" in err

    def test_a_folder_under_a_file_is_one_warning(self, tmp_path: Path, capsys) -> None:
        with TensorBoard(a_file(tmp_path) / "tb", "going on") as writer:
            writer.add_scalar("x", 1.0, 1)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "a_file is a file, not a folder" in err[0], err


class TestCheckedBeforeTheWork:
    def test_evaluate_refuses_a_checkpoint_folder_it_cannot_write_before_any_feature(
            self, cli, tmp_path: Path, read_only) -> None:
        source = checkpoint(tmp_path / "run")
        read_only(source.parent)
        result = cli("evaluate", "--ckpt", str(source), *QUICK_EVAL)
        assert_one_line_error(result, str(source.parent), "--output")
        assert any(cause in result.stderr for cause in READ_ONLY), result.stderr
        assert "features" not in result.stdout and sorted(p.name for p in source.parent.iterdir()) == ["0.pt"]

    def test_evaluate_elsewhere_warns_that_the_cache_stays_in_memory(self, cli, tmp_path: Path, read_only) -> None:
        source = checkpoint(tmp_path / "run")
        read_only(source.parent)
        output = tmp_path / "elsewhere" / "0.eval.json"
        result = cli("evaluate", "--ckpt", str(source), *QUICK_EVAL, "--output", str(output))
        assert result.returncode == 0, result.stderr
        warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert len(warning) == 1 and "feature cache" in warning[0] and "--cache_dir" in warning[0], result.stderr
        assert json.loads(output.read_text())["knn"]["top1"] >= 0
        cached = cli("evaluate", "--ckpt", str(source), *QUICK_EVAL, "--output", str(output),
                     "--cache_dir", str(tmp_path / "cache"))
        assert cached.returncode == 0 and list((tmp_path / "cache").glob("0.pt.*.features")), cached.stderr

    def test_evaluate_refuses_an_output_under_a_file(self, cli, tmp_path: Path) -> None:
        source = checkpoint(tmp_path / "run")
        blocker = a_file(tmp_path)
        result = cli("evaluate", "--ckpt", str(source), *QUICK_EVAL, "--output", str(blocker / "x.json"))
        assert_one_line_error(result, f"{blocker} is a file, not a folder", "--output")
        assert "features" not in result.stdout
        folder = cli("evaluate", "--ckpt", str(source), *QUICK_EVAL, "--output", str(tmp_path))
        assert_one_line_error(folder, f"--output {tmp_path} is a folder")
        assert "features" not in folder.stdout

    @pytest.mark.parametrize("where", ["a file", "read-only"])
    def test_reproduce_refuses_its_out_before_training(self, cli, tmp_path: Path, read_only, where: str) -> None:
        out = a_file(tmp_path) if where == "a file" else read_only(tmp_path / "results")
        result = cli("scripts.reproduce", "cifar10-1ep", "--smoke", "--out", str(out))
        assert_one_line_error(result, str(out), "--out")
        assert "$ python" not in result.stdout and not (tmp_path / "logs").exists()

    def test_reproduce_refuses_a_run_dir_under_a_file(self, cli, tmp_path: Path) -> None:
        run_dir = a_file(tmp_path) / "run"
        result = cli("scripts.reproduce", "cifar10-1ep", "--smoke", "--run_dir", str(run_dir))
        assert_one_line_error(result, "a_file is a file, not a folder", "--run_dir")
        assert "$ python" not in result.stdout

    @pytest.mark.parametrize("flag", ["--out", "--work_dir"])
    def test_gpu_check_refuses_its_folders_before_any_stage(self, cli, tmp_path: Path, read_only, flag: str) -> None:
        folders = {"--out": tmp_path / "check", "--work_dir": tmp_path / "work"}
        argv = ["--tiny", *(item for name, path in folders.items() for item in (name, str(path)))]
        read_only(folders[flag])
        result = cli("scripts.gpu_check", *argv)
        assert_one_line_error(result, str(folders[flag]), flag)
        assert not list(folders["--out"].glob("attempt-*")) and "== versions ==" not in result.stdout
        blocked = cli("scripts.gpu_check", "--tiny", "--out", str(a_file(tmp_path)))
        assert_one_line_error(blocked, "a_file is a file, not a folder", "--out")

    def test_export_refuses_its_out_before_loading(self, cli, tmp_path: Path, read_only) -> None:
        missing = tmp_path / "no-such.pt"  # not read: the output is checked first
        blocked = cli("scripts.export", "--ckpt", str(missing), "--out", str(a_file(tmp_path) / "x.pt"))
        assert_one_line_error(blocked, "a_file is a file, not a folder", "--out")
        folder = read_only(tmp_path / "exports")
        refused = cli("scripts.export", "--ckpt", str(missing), "--out", str(folder / "x.pt"))
        assert_one_line_error(refused, str(folder), "--out")
        assert_one_line_error(cli("scripts.export", "--ckpt", str(missing), "--out", str(tmp_path)), "is a folder")


class TestReproduceKeepsWhatItComputed:
    def test_a_rerun_reuses_both_evaluations_and_keeps_the_earlier_result(self, cli, tmp_path: Path) -> None:
        first = cli("scripts.reproduce", "cifar10-1ep", "--smoke")
        assert first.returncode == 0, first.stderr
        assert first.stdout.count("computed features") == 4  # two splits, two evaluations
        result = tmp_path / "results" / "cifar10-1ep.smoke.json"
        earlier = result.read_text()

        again = cli("scripts.reproduce", "cifar10-1ep", "--smoke")
        assert again.returncode == 0, again.stderr
        assert "features" not in again.stdout and again.stdout.count("reusing ") == 2
        assert (tmp_path / "results" / "cifar10-1ep.smoke.json.1").read_text() == earlier
        assert "kept as results/cifar10-1ep.smoke.json.1" in again.stdout
        assert json.loads(result.read_text())["knn_top1"] == json.loads(earlier)["knn_top1"]

        other = cli("scripts.reproduce", "cifar10-1ep", "--smoke", "--eval_args", "--linear_epochs 2")
        assert other.returncode == 0, other.stderr
        assert "reusing" not in other.stdout  # another protocol: both evaluated again, on the cached features
        assert other.stdout.count("cached features") == 4 and "computed features" not in other.stdout
        assert json.loads((tmp_path / "results" / "cifar10-1ep.smoke.json.2").read_text())["knn_top1"] == \
            json.loads(earlier)["knn_top1"]

    def test_the_evaluation_commands_do_not_force_recompute(self, cli) -> None:
        dry = cli("scripts.reproduce", "cifar10-1ep", "--dry_run")
        assert dry.returncode == 0, dry.stderr
        assert all("--recompute" not in shlex.split(line) for line in dry.stdout.splitlines())


class TestResultsTable:
    def test_seconds_that_are_not_a_number_show_a_dash(self, cli, tmp_path: Path) -> None:
        path = tmp_path / "r.json"
        path.write_text(json.dumps({**RESULT, "train_seconds_per_epoch": float("nan"),
                                    "eval_seconds": float("inf")}))
        result = cli("scripts.results_table", str(path))
        assert result.returncode == 0, result.stderr
        row = cells(result.stdout.splitlines()[2])
        assert row[8:10] == ["—", "—"] and not any(word in " ".join(row).lower() for word in ("nan", "inf"))
