"""Render the README's results table (Markdown) from the result files of scripts/reproduce.py.

Usage:
    python scripts/results_table.py results/*.json               # the rows that ran
    python scripts/results_table.py --all_rows results/*.json    # every row; "not yet measured" for the rest

Ours is the linear probe's final epoch; the best over test epochs (selected on the test set) stands
beside it as the like-for-like comparison with the published figure. Rows from --smoke runs are
marked: their numbers say only that the chain runs. Transfer rows (a row's encoder evaluated on
another data set; nothing published) come in a table of their own, under its own heading.
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
from scripts.rows import RESULT_FIELDS, ROWS, TRANSFER_FIELDS, TRANSFER_ROWS, field_problem  # noqa: E402

HEADER = ["Row", "Protocol", "Published¹", "Ours, final epoch", "Ours, best over test epochs²", "Final − published",
          "kNN", "Random init, linear / kNN", "Time per epoch³", "Eval time⁴", "GPU"]
FOOTNOTES = [
    "¹ Linear top-1 as the official script printed it: presumably its best test epoch of the 100-epoch linear probe.",
    "² Selected on the test set, as the published figure presumably was; ours is the final epoch.",
    "³ Wall-clock of training over the epochs trained, data loading included.",
    "⁴ Bag-of-features (128 patches) of both splits, kNN and the linear probe, for the trained checkpoint.",
]
TRANSFER_HEADING = ("### Transfer: a row's encoder, frozen, evaluated on another data set with the same protocol "
                    "(the official README reports no such number)")
TRANSFER_HEADER = ["Row", "Source → target", "kNN", "Linear, final epoch", "Random init, linear / kNN", "Eval time⁴",
                   "GPU"]
SMOKE_NOTE = ("Rows marked (smoke) ran `--smoke`: synthetic data, a tiny network, seconds on the CPU; their numbers "
              "mean nothing.")


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("EMP-SSL results table", description="Markdown results table from reproduce.py's files.")
    parser.add_argument("files", type=Path, nargs="*", help="result files (results/<row>.json)")
    parser.add_argument("--all_rows", action="store_true",
                        help="list every row of the paper, \"not yet measured\" where no file is given")
    return parser


def load_result(path: Path) -> dict[str, Any]:
    """A result file, checked: JSON, an object, every key of RESULT_FIELDS (and of a transfer row's,
    TRANSFER_FIELDS) present and well-typed."""
    try:
        record = json.loads(path.read_text())
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err})") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not JSON ({err}): rerun scripts/reproduce.py for this row") from err
    if not isinstance(record, dict):
        raise UserError(f"{path}: holds a JSON {type(record).__name__}, not a result object")
    transfer = record.get("row") in TRANSFER_ROWS or "source_row" in record
    fields = [*RESULT_FIELDS, *(TRANSFER_FIELDS if transfer else [])]
    missing = [key for key in fields if key not in record]
    if missing:
        raise UserError(f"{path}: missing key{'s' * (len(missing) > 1)} {', '.join(missing)}: "
                        f"not a result of scripts/reproduce.py")
    for key in fields:
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


def row_name(record: dict[str, Any]) -> str:
    """`row`, marked (smoke) for a --smoke run."""
    return f"`{record['row']}`" + (" (smoke)" if record["smoke"] else "")


def random_init(record: dict[str, Any]) -> str:
    """The random-init baseline's linear / kNN top-1."""
    return f"{record['random_init_linear_top1_final']:.1f} / {record['random_init_knn_top1']:.1f}"


def measured_row(record: dict[str, Any]) -> list[str]:
    """One line of the published table from a result file ("—" where nothing was published)."""
    published = record["published_linear_top1"]
    diff = "—" if published is None else f"{record['linear_top1_final'] - published:+.1f}".replace("-", "−")
    return [row_name(record), record["protocol"], "—" if published is None else f"{published:.1f}",
            f"{record['linear_top1_final']:.1f}", f"{record['linear_top1_best_over_test_epochs']:.1f}", diff,
            f"{record['knn_top1']:.1f}", random_init(record), duration(record["train_seconds_per_epoch"]),
            duration(record["eval_seconds"]), record["gpu"]]


def transfer_row(record: dict[str, Any]) -> list[str]:
    """One line of the transfer table from a transfer row's result file."""
    return [row_name(record), f"`{record['source_row']}` ({record['source_data']}) → {record['target_data']}",
            f"{record['knn_top1']:.1f}", f"{record['linear_top1_final']:.1f}", random_init(record),
            duration(record["eval_seconds"]), record["gpu"]]


def unmeasured_transfer_row(name: str) -> list[str]:
    """A transfer table line for a transfer row without a result file."""
    row = TRANSFER_ROWS[name]
    return [f"`{name}`", f"`{row.source_row}` ({row.data}) → {row.target_data}", "not yet measured",
            *["—"] * (len(TRANSFER_HEADER) - 3)]


def unmeasured_row(name: str) -> list[str]:
    """A table line for a row without a result file."""
    row = ROWS[name]
    return [f"`{name}`", row.protocol, f"{row.published:.1f}", "not yet measured", *["—"] * (len(HEADER) - 4)]


def order(name: str, smoke: bool, names: list[str]) -> tuple[int, str, bool]:
    """The order of names (the paper's rows, or the transfer rows); unknown rows after, by name; a
    smoke run after the real one."""
    return (names.index(name) if name in names else len(names), name, smoke)


def table(header: list[str], entries: list[tuple[tuple[int, str, bool], list[str]]]) -> list[str]:
    """A Markdown table of the entries' cells, in the entries' order."""
    lines = [cells for _, cells in sorted(entries, key=lambda entry: entry[0])]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(c) + " |" for c in lines]


def render(records: list[dict[str, Any]], all_rows: bool = False) -> str:
    """The Markdown table of the published rows, then the transfer rows' own table under its heading
    (each where it has a line; with all_rows, both), then the footnotes."""
    transfers = [r for r in records if "source_row" in r]
    published = [r for r in records if "source_row" not in r]
    entries = [(order(r["row"], r["smoke"], list(ROWS)), measured_row(r)) for r in published]
    transfer_entries = [(order(r["row"], r["smoke"], list(TRANSFER_ROWS)), transfer_row(r)) for r in transfers]
    if all_rows:
        done = {r["row"] for r in records if not r["smoke"]}
        entries += [(order(name, False, list(ROWS)), unmeasured_row(name)) for name in ROWS if name not in done]
        transfer_entries += [(order(name, False, list(TRANSFER_ROWS)), unmeasured_transfer_row(name))
                             for name in TRANSFER_ROWS if name not in done]
    lines = [*table(HEADER, entries), ""] if entries else []
    if transfer_entries:
        lines += [TRANSFER_HEADING, "", *table(TRANSFER_HEADER, transfer_entries), ""]
    notes = FOOTNOTES if entries else FOOTNOTES[-1:]  # the transfer table refers to ⁴ only
    return "\n".join(lines + notes + ([SMOKE_NOTE] if any(r["smoke"] for r in records) else []))


def main(args: argparse.Namespace) -> None:
    if not args.files and not args.all_rows:
        raise UserError("no result files: pass results/*.json (or --all_rows for the empty table)")
    print(render([load_result(path) for path in args.files], args.all_rows))


if __name__ == "__main__":
    run_cli(main, get_args_parser())
