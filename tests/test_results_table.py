"""scripts/results_table.py: the README's table from result files, and refusals of malformed ones."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error

RESULT = {
    "row": "cifar10-1ep", "smoke": False,
    "protocol": "20 patches, epoch 1 of a 2-epoch cosine schedule (the official one-epoch command); 0.pt",
    "data": "cifar10", "arch": "resnet18-cifar", "num_patches": 20, "bs": 100, "lr": 0.3, "schedule_epochs": 2,
    "trained_epochs": 1, "checkpoint": "logs/reproduce/cifar10-1ep/save_models/0.pt", "resumed": False,
    "published_linear_top1": 84.2, "published_label": "as the official script printed it",
    "linear_top1_final": 82.95, "linear_top1_best_over_test_epochs": 83.31, "knn_top1": 74.26,
    "random_init_linear_top1_final": 37.5, "random_init_knn_top1": 30.12, "test_patches": 128,
    "train_seconds": 396.0, "train_seconds_per_epoch": 396.0, "eval_seconds": 1250.0,
    "random_init_eval_seconds": 1240.0, "gpu": "NVIDIA H200", "torch": "2.14.1", "git_commit": "abc123",
    "commands": ["python main.py …", "python evaluate.py …", "python evaluate.py … --random_init"],
}

TRANSFER = {**RESULT, "row": "cifar10-30ep-to-cifar100", "published_linear_top1": None,
            "published_label": "none: the official README reports no transfer result",
            "linear_top1_final": 61.04, "knn_top1": 52.36, "random_init_linear_top1_final": 18.2,
            "random_init_knn_top1": 12.74, "eval_seconds": 1300.0, "source_row": "cifar10-30ep",
            "source_data": "cifar10", "target_data": "cifar100", "transfer": "the encoder of cifar10-30ep, frozen"}


def write(folder: Path, name: str, record: dict | str) -> Path:
    path = folder / name
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


class TestTable:
    def test_rows_in_the_papers_order_with_difference_times_and_smoke_mark(self, cli, tmp_path: Path) -> None:
        smoke = {**RESULT, "row": "cifar10-30ep", "smoke": True, "published_linear_top1": 93.1,
                 "linear_top1_final": 20.0, "gpu": "cpu", "train_seconds_per_epoch": 3.54}
        files = [write(tmp_path, "b.json", smoke), write(tmp_path, "a.json", RESULT)]
        result = cli("scripts.results_table", *map(str, files))
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
        assert len(lines) == 4  # header, rule, two rows
        header, first, second = cells(lines[0]), cells(lines[2]), cells(lines[3])
        assert header[:4] == ["Row", "Protocol", "Published¹", "Ours, final epoch"]
        assert first == ["`cifar10-1ep`", RESULT["protocol"], "84.2", "83.0", "83.3", "−1.2", "74.3", "37.5 / 30.1",
                         "6.6 min", "20.8 min", "NVIDIA H200"]
        assert second[0] == "`cifar10-30ep` (smoke)" and second[5] == "−73.1" and second[8] == "3.5 s"
        assert "(smoke) ran `--smoke`" in result.stdout and "best test epoch" in result.stdout

    def test_all_rows_lists_the_unmeasured_ones(self, cli, tmp_path: Path) -> None:
        result = cli("scripts.results_table", "--all_rows", str(write(tmp_path, "a.json", RESULT)))
        assert result.returncode == 0, result.stderr
        published, transfers = result.stdout.split("### Transfer")
        rows = [cells(line) for line in published.splitlines()[2:] if line.startswith("|")]
        assert len(rows) == 18 and rows[0][0] == "`cifar10-1ep`" and rows[0][3] == "83.0"
        unmeasured = {row[0]: row for row in rows[1:]}
        assert unmeasured["`imagenet100-200p-10ep`"][2:4] == ["78.9", "not yet measured"]
        assert all(row[3] == "not yet measured" for row in rows[1:])
        names = [cells(line)[0] for line in transfers.splitlines() if line.startswith("| `")]
        assert names == ["`cifar10-30ep-to-cifar100`", "`cifar100-30ep-to-cifar10`", "`cifar10-1ep-to-cifar100`",
                         "`cifar100-1ep-to-cifar10`"]

    def test_transfer_rows_have_their_own_table_under_their_own_heading(self, cli, tmp_path: Path) -> None:
        files = [write(tmp_path, "t.json", TRANSFER), write(tmp_path, "a.json", RESULT)]
        result = cli("scripts.results_table", *map(str, files))
        assert result.returncode == 0, result.stderr
        published, transfers = result.stdout.split("### Transfer")
        assert "cifar100" not in published and "`cifar10-1ep`" not in transfers
        assert [cells(line)[0] for line in published.splitlines() if line.startswith("| `")] == ["`cifar10-1ep`"]
        lines = [cells(line) for line in transfers.splitlines() if line.startswith("|")]
        assert lines[0][:5] == ["Row", "Source → target", "kNN", "Linear, final epoch", "Random init, linear / kNN"]
        assert lines[2] == ["`cifar10-30ep-to-cifar100`", "`cifar10-30ep` (cifar10) → cifar100", "52.4", "61.0",
                            "18.2 / 12.7", "21.7 min", "NVIDIA H200"]
        alone = cli("scripts.results_table", str(files[0]))  # no empty table of published rows
        assert alone.returncode == 0 and "Published¹" not in alone.stdout and "### Transfer" in alone.stdout


class TestMalformed:
    @pytest.mark.parametrize("content,fragment", [
        ("{\"row\": ", "not JSON"),
        ("[1, 2]", "not a result object"),
        (json.dumps({k: v for k, v in RESULT.items() if k != "knn_top1"}), "missing key knn_top1"),
        (json.dumps({**RESULT, "linear_top1_final": "82.9"}), "linear_top1_final should be a number"),
        (json.dumps({**RESULT, "knn_top1": 0.74e3}), "knn_top1 should be a percentage"),
        (json.dumps({k: v for k, v in TRANSFER.items() if k != "target_data"}), "missing key target_data"),
        (json.dumps({**TRANSFER, "published_linear_top1": "none"}), "published_linear_top1 should be a number"),
    ])
    def test_refused_with_one_line_naming_the_file(self, cli, tmp_path: Path, content: str, fragment: str) -> None:
        good, bad = write(tmp_path, "good.json", RESULT), write(tmp_path, "bad.json", content)
        result = cli("scripts.results_table", str(good), str(bad))
        assert_one_line_error(result, str(bad), fragment)
        assert "|" not in result.stdout
