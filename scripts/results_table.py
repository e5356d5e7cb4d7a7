"""Render the README's results table (Markdown) from the result files of scripts/reproduce.py.

Usage:
    python scripts/results_table.py results/*.json               # the rows that ran
    python scripts/results_table.py --all_rows results/*.json    # every row; "not yet measured" for the rest

Ours is the linear probe's final epoch; the best over test epochs (selected on the test set) stands
beside it as the like-for-like comparison with the published figure. Rows from --smoke runs are
marked: their numbers say only that the chain runs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # first: Ctrl-C while the modules below load ends in one line, status 130
    from plumbing.errors import interrupt_in_one_line
    interrupt_in_one_line()


from plumbing.cli import ArgumentParser, run_cli  # noqa: E402
from plumbing.errors import UserError  # noqa: E402
from scripts.rows import RESULT_FIELDS, ROWS, field_problem  # noqa: E402

HEADER = ["Row", "Protocol", "Published¹", "Ours, final epoch", "Ours, best over test epochs²", "Final − published",
          "kNN", "Random init, linear / kNN", "Time per epoch³", "Eval time⁴", "GPU"]
FOOTNOTES = [
    "¹ Linear top-1 as the official script printed it: presumably its best test epoch of the 100-epoch linear probe.",
    "² Selected on the test set, as the published figure presumably was; ours is the final epoch.",
    "³ Wall-clock of training over the epochs trained, data loading included. "
    "⁴ Bag-of-features (128 patches) of both splits, kNN and the linear probe, for the trained checkpoint.",
]


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("EMP-SSL results table", description="Markdown results table from reproduce.py's files.")
    parser.add_argument("files", type=Path, nargs="*", help="result files (results/<row>.json)")
    parser.add_argument("--all_rows", action="store_true",
                        help="list every row of the paper, \"not yet measured\" where no file is given")
    return parser


def load_result(path: Path) -> dict[str, Any]:
    """A result file, checked: JSON, an object, every key of RESULT_FIELDS present and well-typed."""
    try:
        record = json.loads(path.read_text())
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err})") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not JSON ({err}): rerun scripts/reproduce.py for this row") from err
    if not isinstance(record, dict):
        raise UserError(f"{path}: holds a JSON {type(record).__name__}, not a result object")
    missing = [key for key in RESULT_FIELDS if key not in record]
    if missing:
        raise UserError(f"{path}: missing key{'s' * (len(missing) > 1)} {', '.join(missing)}: "
                        f"not a result of scripts/reproduce.py")
    for key in RESULT_FIELDS:
        problem = field_problem(key, record[key])
        if problem:
            raise UserError(f"{path}: {problem}")
    return record


def duration(seconds: float) -> str:
    """42 s, 6.6 min, 1.2 h; "—" where no time was measured (NaN or infinite)."""
    if not math.isfinite(seconds):
        return "—"
    if seconds < 100:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 6000 else f"{seconds / 3600:.1f} h"


def measured_row(record: dict[str, Any]) -> list[str]:
    """One table line from a result file."""
    name = f"`{record['row']}`" + (" (smoke)" if record["smoke"] else "")
    diff = record["linear_top1_final"] - record["published_linear_top1"]
    return [name, record["protocol"], f"{record['published_linear_top1']:.1f}", f"{record['linear_top1_final']:.1f}",
            f"{record['linear_top1_best_over_test_epochs']:.1f}", f"{diff:+.1f}".replace("-", "−"),
            f"{record['knn_top1']:.1f}",
            f"{record['random_init_linear_top1_final']:.1f} / {record['random_init_knn_top1']:.1f}",
            duration(record["train_seconds_per_epoch"]), duration(record["eval_seconds"]), record["gpu"]]


def unmeasured_row(name: str) -> list[str]:
    """A table line for a row without a result file."""
    row = ROWS[name]
    return [f"`{name}`", row.protocol, f"{row.published:.1f}", "not yet measured", *["—"] * (len(HEADER) - 4)]


def order(name: str, smoke: bool) -> tuple[int, str, bool]:
    """The paper's row order; unknown rows after, by name; a smoke run after the real one."""
    names = list(ROWS)
    return (names.index(name) if name in ROWS else len(names), name, smoke)


def render(records: list[dict[str, Any]], all_rows: bool = False) -> str:
    """The Markdown table, with its footnotes."""
    entries = [(order(r["row"], r["smoke"]), measured_row(r)) for r in records]
    if all_rows:
        done = {r["row"] for r in records if not r["smoke"]}
        entries += [(order(name, False), unmeasured_row(name)) for name in ROWS if name not in done]
    lines = [cells for _, cells in sorted(entries, key=lambda entry: entry[0])]
    table = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    table += ["| " + " | ".join(cells) + " |" for cells in lines]
    notes = FOOTNOTES + (["Rows marked (smoke) ran `--smoke`: synthetic data, a tiny network, seconds on the CPU; "
                          "their numbers mean nothing."] if any(r["smoke"] for r in records) else [])
    return "\n".join(table + [""] + notes)


def main(args: argparse.Namespace) -> None:
    if not args.files and not args.all_rows:
        raise UserError("no result files: pass results/*.json (or --all_rows for the empty table)")
    print(render([load_result(path) for path in args.files], args.all_rows))


if __name__ == "__main__":
    run_cli(main, get_args_parser())
