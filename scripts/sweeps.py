"""The presets of `scripts/sweep.py`: named grids of training runs, the epochs at which each run is
evaluated, and the evaluation's settings, to test the paper's claims with learning curves.

Every run of a preset trains with main.py's flags: the preset's `settings`, then the run's own
`flags` (P, the schedule's length --epoch, ...); its cosine schedule spans its own --epoch. An
epoch here counts the epochs trained: epoch e is the checkpoint save_models/<e - 1>.pt. A patch
budget is P × epochs ("patch-epochs"), so P = 2 for 16 epochs and P = 32 for one see the same
number of patches.

The evaluation of every epoch is evaluate.py's bag-of-features with weighted kNN and linear probe
top-1 on the held-out test split, at settings cheaper than the table's protocol (128 patches per
image; scripts/reproduce.py runs that one): `PAPER_EVAL` on a GPU, `CPU_EVAL` for `patches-cpu`.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its name (its folder under the sweep's --run_root), main.py flags of its
    own (--num_patches and --epoch at least), and the epochs evaluated (None: every epoch)."""

    name: str
    flags: dict[str, object]
    evaluated: tuple[int, ...] | None = None

    @property
    def epochs(self) -> int:
        """Epochs trained: the run's --epoch, its whole cosine schedule."""
        return int(self.flags["epoch"])  # type: ignore[call-overload]

    @property
    def num_patches(self) -> int:
        return int(self.flags["num_patches"])  # type: ignore[call-overload]

    def evaluated_epochs(self) -> list[int]:
        """The epochs (1 … epochs) whose checkpoint is evaluated, in order."""
        return list(self.evaluated) if self.evaluated is not None else list(range(1, self.epochs + 1))


@dataclass(frozen=True)
class Sweep:
    """A named grid: a one-line description (budget and time), main.py flags of every run, the runs,
    evaluate.py flags of every evaluation, the default --data_dir and the training images of an
    epoch at the preset's data (for the patch budget that --dry_run prints)."""

    name: str
    description: str
    settings: dict[str, object]
    runs: tuple[SweepRun, ...]
    evaluation: dict[str, object]
    data_dir: Path = Path("data")
    images: int = 50_000


# The paper's training: ResNet-18 with the CIFAR stem, official widths, batch 100, LARS lr 0.3; a
# step that does not fit one GPU's memory runs in slices (--patch_chunks auto, as scripts/rows.py).
PAPER_TRAIN = {"data": "cifar10", "arch": "resnet18-cifar", "bs": 100, "lr": 0.3, "patch_chunks": "auto"}
# A curve point on a GPU: 32 patches per image instead of the table's 128 (a quarter of the forward
# passes), the official kNN (k 20, T 0.07) and the official 100-epoch linear probe.
PAPER_EVAL = {"test_patches": 32, "knn_k": 20, "knn_t": 0.07, "linear_epochs": 100}
# patches-cpu: the 5,000 training images of a CIFAR-10 slice (scripts/make_cifar_slice.py; or
# --train_args "--data cifar10": a class-balanced 5,000 of CIFAR-10), resnet10-cifar at the widths
# of docs/augmentation.md's CPU measurement, the paper's batch and LARS lr; evaluated on 8 patches
# per image (the README's quick evaluation). Measured on the project's 2-core CPU, quiet, with
# main.py --max_steps and evaluate.py on the 5,000 + 1,000 synthetic images (same size): training
# 1,415 / 1,026 / 996 / 819 / 778 patches/s at P = 2 / 4 / 8 / 16 / 32, so 160,000 patches per run
# take 113 / 156 / 161 / 195 / 206 s (831 s); an evaluation at 16 patches took 47 s, at 8
# 23 s, 12 of them about 280 s; with start-up, about 19 min in all.
CPU_TRAIN = {"data": "imagefolder", "train_subset": 5000, "arch": "resnet10-cifar", "hidden_dim": 1024,
             "z_dim": 256, "bs": 100, "lr": 0.3}
CPU_EVAL = {"train_subset": 5000, "test_subset": 1000, "test_patches": 8, "knn_k": 20, "knn_t": 0.07,
            "linear_epochs": 100}


def budget_points(num_patches: int, points: tuple[int, ...]) -> tuple[int, ...]:
    """The epochs at which a run of P patches has seen each budget of `points` patch-epochs (those
    that a whole number of epochs reaches): P = 4 at (8, 16, 32) → epochs (2, 4, 8)."""
    return tuple(budget // num_patches for budget in points if budget % num_patches == 0 and budget >= num_patches)


def equal_budget(budget: int, patches: tuple[int, ...], points: tuple[int, ...]) -> tuple[SweepRun, ...]:
    """One run per P at `budget` patch-epochs (P × epochs = budget), each evaluated at the budget points."""
    return tuple(SweepRun(f"p{p}", {"num_patches": p, "epoch": budget // p}, budget_points(p, points))
                 for p in patches)


def scale_name(scale: Fraction) -> str:
    """1/16 → "1-16", 1 → "1": a folder name."""
    return str(scale).replace("/", "-")


def crop_scale_runs() -> tuple[SweepRun, ...]:
    """20 patches at crop scales 1/16 … 1, then the series at a constant number of image pixels per
    step (P × crop_scale = 5: P 5 at 1, 10 at 1/2, 20 at 1/4 (the run of the first series), 40 at 1/8,
    80 at 1/16); 10 epochs each, evaluated after epochs 1, 2, 5 and 10."""
    pairs = [(20, Fraction(1, 2 ** k)) for k in (4, 3, 2, 1, 0)]
    pairs += [(5 * 2 ** k, Fraction(1, 2 ** k)) for k in (0, 1, 3, 4)]  # 20 at 1/4 is above already
    return tuple(SweepRun(f"p{p}-scale{scale_name(s)}", {"num_patches": p, "crop_scale": float(s), "epoch": 10},
                          (1, 2, 5, 10)) for p, s in pairs)


CPU_PATCHES = (2, 4, 8, 16, 32)
PAPER_PATCHES = (2, 5, 10, 20, 50, 100, 200)

SWEEPS: dict[str, Sweep] = {sweep.name: sweep for sweep in [
    Sweep("patches-cpu", "P in 2..32 at an equal budget of 32 patch-epochs (800,000 patches) on a 5,000-image "
          "CIFAR-10 slice, resnet10-cifar; about 20 min on 2 quiet CPU cores (training 14, 12 evaluations 5)",
          CPU_TRAIN, equal_budget(32, CPU_PATCHES, (8, 16, 32)), CPU_EVAL, Path("data/cifar10-slice"), 5000),
    Sweep("patches-cifar10", "the paper's CIFAR-10 training at P in 2..200, 10 epochs each, evaluated every epoch "
          "(GPU)", PAPER_TRAIN, tuple(SweepRun(f"p{p}", {"num_patches": p, "epoch": 10}) for p in PAPER_PATCHES),
          PAPER_EVAL),
    Sweep("budget-cifar10", "the paper's CIFAR-10 training at P in 2..200 at an equal budget of 200 patch-epochs "
          "(P=200 one epoch ... P=2 100 epochs), evaluated at 20, 40, 100 and 200 patch-epochs (GPU)", PAPER_TRAIN,
          equal_budget(200, PAPER_PATCHES, (20, 40, 100, 200)), PAPER_EVAL),
    Sweep("cropscale-cifar10", "20 patches at --crop_scale 1/16..1, and P 5..80 at a constant P × crop_scale, "
          "10 epochs each, evaluated after epochs 1, 2, 5, 10 (GPU)", PAPER_TRAIN, crop_scale_runs(), PAPER_EVAL),
    Sweep("objective-cifar10", "--loss emp against --loss vicreg at P = 2 and 20, 10 epochs each, evaluated every "
          "epoch (GPU)", PAPER_TRAIN,
          tuple(SweepRun(f"{loss}-p{p}", {"num_patches": p, "loss": loss, "epoch": 10})
                for loss in ("emp", "vicreg") for p in (2, 20)), PAPER_EVAL),
]}
