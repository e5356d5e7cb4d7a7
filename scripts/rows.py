"""The rows of the paper's results table and the result file that `scripts/reproduce.py` writes
for each one (read back by `scripts/results_table.py`).

A row fixes the data set, the backbone, the patches per image P, the cosine schedule's length
(`main.py --epoch E`) and how many of its epochs are trained. Every row uses the paper's batch of
100 images and learning rate 0.3. Two protocols exist for one epoch of training:

- `1ep`: the official README's command, `--epoch 2`, reporting the checkpoint after the first
  epoch (`save_models/0.pt`, the learning rate about half-way down its cosine);
  `--epoch 2 --train_epochs 1` writes exactly that checkpoint at half the cost.
- `1ep-30sched`: the first epoch of the default 30-epoch schedule (`--epoch 30 --train_epochs 1`).

The published numbers are the linear-probe top-1 (percent, bag-of-features over 128 patches) of
the paper and the official README, as the official script printed them: presumably its best test
epoch of the 100-epoch linear probe, i.e. selected on the test set.

A transfer row (`TRANSFER_ROWS`, e.g. `cifar10-30ep-to-cifar100`) is a row of the table trained as
that row (its source, the same run folder) and evaluated on another data set (its target); the
official README reports no such number, so its published value is None.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

PUBLISHED_LABEL = ("linear top-1 as the official script printed it: presumably the best test epoch of its "
                   "100-epoch linear probe (selected on the test set)")
NO_PUBLISHED_LABEL = "none: the official README reports no transfer result"

@dataclass(frozen=True)
class Row:
    """One row: data set, backbone, P, the schedule (--epoch) and the epochs trained in it."""

    name: str
    data: str
    arch: str
    num_patches: int
    schedule_epochs: int
    trained_epochs: int
    published: float | None  # linear top-1, percent, as the official script printed it; None: not reported
    note: str = ""
    bs: int = 100
    lr: float = 0.3
    source_row: str | None = None  # a transfer row: the row whose training it evaluates …
    target_data: str | None = None  # … on this data set

    @property
    def checkpoint(self) -> str:
        """File name of the evaluated checkpoint in save_models/: the end of the last trained epoch."""
        return f"{self.trained_epochs - 1}.pt"

    @property
    def protocol(self) -> str:
        """The protocol in words, precise enough to tell the two one-epoch rows apart (and, for a
        transfer row, the data sets it was trained and evaluated on)."""
        if not self.stops_early:
            words = f"{self.num_patches} patches, {self.schedule_epochs} epochs; {self.checkpoint}"
        else:
            origin = " (the official one-epoch command)" if self.schedule_epochs == 2 else ""
            words = (f"{self.num_patches} patches, epoch 1 of a {self.schedule_epochs}-epoch cosine schedule{origin}; "
                     f"{self.checkpoint}")
        transfer = f"; trained on {self.data}, evaluated on {self.target_data}" if self.target_data else ""
        return words + transfer

    @property
    def published_label(self) -> str:
        """What the published number is, or that there is none."""
        return NO_PUBLISHED_LABEL if self.published is None else PUBLISHED_LABEL + self.note

    def settings(self) -> dict[str, object]:
        """main.py flags (without dashes) that define the row's model and optimisation; every row runs
        with --patch_chunks auto, which keeps the plain step (K = 1) wherever it fits in memory."""
        return {"data": self.data, "arch": self.arch, "num_patches": self.num_patches, "bs": self.bs, "lr": self.lr,
                "patch_chunks": "auto"}

    @property
    def stops_early(self) -> bool:
        """Does training stop before the schedule ends (the one-epoch rows)?"""
        return self.trained_epochs < self.schedule_epochs

    def schedule_flags(self) -> list[str]:
        """--epoch E, plus --train_epochs (the epochs trained) when training stops early."""
        flags = ["--epoch", str(self.schedule_epochs)]
        return flags + ["--train_epochs", str(self.trained_epochs)] if self.stops_early else flags


def _cifar_rows(data: str, published: dict[str, float]) -> list[Row]:
    """The CIFAR rows of one data set, from {row suffix: published top-1}."""
    shapes = {"1ep": (20, 2, 1), "1ep-30sched": (20, 30, 1), "10ep": (20, 10, 10), "30ep": (20, 30, 30),
              "200p-1ep-30sched": (200, 30, 1), "200p-10ep": (200, 10, 10), "200p-30ep": (200, 30, 30)}
    note = {"cifar10-1ep": "; the abstract says 85.1", "cifar10-200p-1ep-30sched": "; the official README's starred entry"}
    return [Row(f"{data}-{suffix}", data, "resnet18-cifar", *shapes[suffix], top1, note.get(f"{data}-{suffix}", ""))
            for suffix, top1 in published.items()]


ROWS: dict[str, Row] = {row.name: row for row in [
    *_cifar_rows("cifar10", {"1ep": 84.2, "1ep-30sched": 80.6, "10ep": 90.7, "30ep": 93.1,
                             "200p-1ep-30sched": 82.6, "200p-10ep": 91.5, "200p-30ep": 93.4}),
    *_cifar_rows("cifar100", {"1ep": 58.5, "1ep-30sched": 55.1, "10ep": 67.8, "30ep": 72.4,
                              "200p-1ep-30sched": 57.7, "200p-10ep": 70.1, "200p-30ep": 73.3}),
    Row("tinyimagenet-1ep", "tinyimagenet", "resnet18-tinyimagenet", 20, 2, 1, 38.1),
    Row("tinyimagenet-200p-10ep", "tinyimagenet", "resnet18-tinyimagenet", 200, 10, 10, 51.5),
    Row("imagenet100-1ep", "imagenet100", "resnet18-imagenet", 20, 2, 1, 58.5),
    Row("imagenet100-200p-10ep", "imagenet100", "resnet18-imagenet", 200, 10, 10, 78.9),
]}


def transfer(source: Row, target: str) -> Row:
    """The transfer row of a source row: its training (every setting, the checkpoint), evaluated on target."""
    return replace(source, name=f"{source.name}-to-{target}", published=None, note="", source_row=source.name,
                   target_data=target)


TRANSFER_ROWS: dict[str, Row] = {row.name: row for row in [
    transfer(ROWS[source], target) for source, target in (("cifar10-30ep", "cifar100"), ("cifar100-30ep", "cifar10"),
                                                           ("cifar10-1ep", "cifar100"), ("cifar100-1ep", "cifar10"))]}
ALL_ROWS: dict[str, Row] = {**ROWS, **TRANSFER_ROWS}

# Every key of a result file and its kind: "top1" (a percentage), "top1 or null", "seconds" (≥ 0), or a Python type.
RESULT_FIELDS: dict[str, object] = {
    "row": str, "smoke": bool, "protocol": str, "data": str, "arch": str, "num_patches": int, "bs": int,
    "lr": float, "schedule_epochs": int, "trained_epochs": int, "checkpoint": str, "resumed": bool,
    "published_linear_top1": "top1 or null", "published_label": str,
    "linear_top1_final": "top1", "linear_top1_best_over_test_epochs": "top1", "knn_top1": "top1",
    "random_init_linear_top1_final": "top1", "random_init_knn_top1": "top1", "test_patches": int,
    "train_seconds": "seconds", "train_seconds_per_epoch": "seconds", "eval_seconds": "seconds",
    "random_init_eval_seconds": "seconds", "gpu": str, "torch": str, "git_commit": str, "commands": list,
}
# The keys a transfer row's result file adds: the source row, the data sets it was trained and
# evaluated on (as they ran: --smoke's stand-ins included), and the transfer in words.
TRANSFER_FIELDS: dict[str, object] = {"source_row": str, "source_data": str, "target_data": str, "transfer": str}


def field_problem(key: str, value: object) -> str | None:
    """Why value is not a valid `key` of a result file (a transfer row's too), or None when it is."""
    kind = {**RESULT_FIELDS, **TRANSFER_FIELDS}[key]
    if kind == "top1 or null":  # None: nothing was published (a transfer row)
        if value is None:
            return None
        kind = "top1"
    if kind in ("top1", "seconds") or kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{key} should be a number, not {value!r}"
        if kind == "top1" and not 0 <= value <= 100:
            return f"{key} should be a percentage in [0, 100], not {value}"
        if kind == "seconds" and value < 0:
            return f"{key} should be seconds ≥ 0, not {value}"
        return None
    return None if isinstance(value, kind) else f"{key} should be a {kind.__name__}, not {value!r}"
