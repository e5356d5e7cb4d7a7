"""The plot of scripts/sweep.py's result file: top-1 against the epochs trained and against the
training seconds, one colour per run, kNN solid and linear dashed.

matplotlib is an optional dependency, imported here alone and only when a plot is drawn: without
it, :func:`plot` says so in one line and the sweep goes on.
"""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

from plumbing.files import write_file


def plot(record: dict[str, Any], path: Path) -> bool:
    """Draw the curves into path (PNG): top-1 against epochs and against training seconds, one colour
    per run, kNN solid and linear dashed. False, with one line on stderr, when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print(f"sweep: no plot drawn ({path}): matplotlib is not installed; pip install matplotlib, then run the "
              f"same command again (nothing is trained or evaluated again)", file=sys.stderr, flush=True)
        return False
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True, layout="constrained")
    colours = plt.get_cmap("tab10" if len(record["runs"]) <= 10 else "tab20").colors
    handles = []
    for colour, curve in zip(colours, record["runs"]):
        for probe, style in (("knn", "-"), ("linear", "--")):
            for axis, x in zip(axes, ("epoch", "train_seconds")):
                points = [(p[x], p[f"{probe}_top1"]) for p in curve["epochs"]
                          if p[x] is not None and p[f"{probe}_top1"] is not None]
                if points:
                    axis.plot(*zip(*points), style, marker="o", color=colour)
        handles.append(Line2D([], [], color=colour, marker="o", label=curve["name"]))
    handles += [Line2D([], [], color="black", linestyle=style, label=label)
                for style, label in (("-", "kNN top-1"), ("--", "linear top-1"))]
    for axis, label in zip(axes, ("epochs trained", "training seconds (cumulative: steps and data loading)")):
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("top-1 on the test split (%)")
    title = f"{record['sweep']}{' (smoke)' if record['smoke'] else ''}: {record['description']}"
    figure.suptitle(textwrap.fill(title, 140), fontsize="medium")
    figure.legend(handles=handles, loc="outside right upper")
    write_file(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100), "choose another --out")
    plt.close(figure)
    return True
