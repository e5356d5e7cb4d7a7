"""The bad-input battery of main.py: one line, non-zero exit, no traceback, nothing overwritten."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, assert_one_line_error, run_script, write_image_folder

from dataset import build_dataset
from plumbing.errors import UserError, one_line

FOLDER_RUN = ["--data", "imagefolder", "--arch", "resnet10-cifar", "--hidden_dim", "32", "--z_dim", "16",
              "--num_patches", "2", "--device", "cpu", "--epoch", "1"]


class TestImageFolders:
    @pytest.fixture
    def corrupt_tree(self, tmp_path: Path) -> Path:
        root = write_image_folder(tmp_path / "images", sizes=[(32, 32)] * 6)
        (root / "train" / "a" / "broken.png").write_bytes(b"this is not a png")
        return root

    def test_corrupt_image_is_named_even_from_a_worker(self, tmp_path: Path, corrupt_tree: Path) -> None:
        """A real process: the worker's error reaches the user as one line and the process exits."""
        result = run_script("main.py", *FOLDER_RUN, "--data_dir", str(corrupt_tree), "--bs", "13", "--workers", "1",
                            "--output_dir", str(tmp_path / "run"), cwd=tmp_path)
        assert_one_line_error(result, "broken.png", "--skip_bad_images")
        assert not list((tmp_path / "run").rglob("*.pt"))

    def test_skip_bad_images_leaves_it_out_with_a_warning(self, cli, tmp_path: Path, corrupt_tree: Path) -> None:
        with pytest.warns(UserWarning, match="broken.png"):
            result = cli("main", *FOLDER_RUN, "--data_dir", str(corrupt_tree), "--bs", "12", "--workers", "0",
                         "--skip_bad_images", "--output_dir", str(tmp_path / "run"))
        assert result.returncode == 0, result.stderr
        assert torch.load(tmp_path / "run/save_models/last.pt", weights_only=False)["step"] == 1

    def test_under_torchrun_every_process_skips_but_only_local_rank_0_warns(self, monkeypatch,
                                                                            corrupt_tree: Path) -> None:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", "1")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning would fail the test
            folder = build_dataset("imagefolder", corrupt_tree, "train", skip_bad_images=True)
        assert len(folder) == 12 and not any("broken" in path for path, _ in folder.samples)
        monkeypatch.setenv("LOCAL_RANK", "0")
        with pytest.warns(UserWarning, match="broken.png"):
            build_dataset("imagefolder", corrupt_tree, "train", skip_bad_images=True)

    def test_empty_class_folder(self, cli, tmp_path: Path) -> None:
        root = write_image_folder(tmp_path / "images", sizes=[(32, 32)] * 6)
        (root / "train" / "empty").mkdir()
        result = cli("main", *FOLDER_RUN, "--data_dir", str(root), "--bs", "4", "--workers", "0",
                     "--output_dir", str(tmp_path / "run"))
        assert_one_line_error(result, "empty", "class")
        assert not (tmp_path / "run").exists()


class TestRunFolders:
    @pytest.fixture
    def run(self, cli, tmp_path: Path) -> Path:
        assert cli("main", *TINY_RUN, "--max_steps", "1", "--output_dir", str(tmp_path / "run")).returncode == 0
        return tmp_path / "run"

    def test_resume_with_another_architecture(self, cli, run: Path) -> None:
        before = (run / "save_models" / "last.pt").read_bytes()
        flags = [*TINY_RUN, "--arch", "resnet18-cifar", "--resume", "--output_dir", str(run)]
        assert_one_line_error(cli("main", *flags), "--arch resnet10-cifar", "resnet18-cifar")
        assert (run / "save_models" / "last.pt").read_bytes() == before

    def test_resume_from_a_file_that_is_not_a_checkpoint(self, cli, run: Path) -> None:
        (run / "save_models" / "last.pt").write_text("garbage")
        result = cli("main", *TINY_RUN, "--resume", "--output_dir", str(run))
        assert_one_line_error(result, "last.pt", "not a readable PyTorch checkpoint")
        assert (run / "save_models" / "last.pt").read_text() == "garbage"

    def test_resume_without_a_checkpoint(self, cli, tmp_path: Path) -> None:
        result = cli("main", *TINY_RUN, "--resume", "--output_dir", str(tmp_path / "new"))
        assert_one_line_error(result, "no checkpoint")
        assert not (tmp_path / "new").exists()

    def test_output_folder_that_cannot_be_written(self, cli, tmp_path: Path) -> None:
        (tmp_path / "a_file").write_text("")
        result = cli("main", *TINY_RUN, "--max_steps", "1", "--output_dir", str(tmp_path / "a_file" / "run"))
        assert_one_line_error(result, "cannot write the run folder", "--output_dir")

    @pytest.mark.parametrize("flags,fragment", [
        (["--save_every_steps", "0"], "--save_every_steps"),
        (["--skip_nonfinite", "-1"], "--skip_nonfinite"),
        (["--max_steps", "0"], "--max_steps"),
        (["--device", "cuda"], "no GPU"),
        (["--train_subset", "5"], "subset"),
        (["--bs", "80"], "--bs"),
    ])
    def test_impossible_values(self, cli, tmp_path: Path, flags: list[str], fragment: str) -> None:
        if flags[0] == "--device" and torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
        result = cli("main", *TINY_RUN, *flags, "--output_dir", str(tmp_path / "run"))
        assert_one_line_error(result, fragment)
        assert not (tmp_path / "run").exists()


class TestOneLine:
    """errors.one_line: the one line each caller puts in its message."""

    def test_user_error_from_a_worker_gives_its_own_message(self) -> None:
        err = UserError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1\nerrors.UserError: cannot read the image a.png")
        assert one_line(err) == "cannot read the image a.png"
        assert one_line(UserError("  --bs must be at least 2 ")) == "--bs must be at least 2"

    def test_typed_first_line_keeps_the_errno(self) -> None:
        err = FileNotFoundError(2, "No such file or directory", "x/train")
        assert one_line(err, typed=True) == "FileNotFoundError: [Errno 2] No such file or directory: 'x/train'"
        assert one_line(RuntimeError("bad archive\ndetails"), typed=True) == "RuntimeError: bad archive"
        assert one_line(EOFError(), typed=True) == "EOFError"

    def test_sentence_drops_the_cpp_location_and_what_follows(self) -> None:
        err = RuntimeError("[../third_party/gloo/transport/tcp/pair.cc:598] Connection closed by peer. "
                           "Rank 1 is gone\nException raised from recvAll")
        assert one_line(err, sentence=True) == "Connection closed by peer"
        assert one_line(RuntimeError("x" * 300), sentence=True) == "x" * 200
