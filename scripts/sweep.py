"""Sweep: a named grid of training runs (the presets of scripts/sweeps.py), each evaluated after
the epochs its preset names, as learning curves: results/<name>.json and results/<name>.png.

Usage:
    python scripts/sweep.py patches-cpu                        # P at an equal patch budget, 2 CPU cores
    python scripts/sweep.py patches-cpu --data_dir data --train_args "--data cifar10"   # on CIFAR-10 itself
    python scripts/sweep.py budget-cifar10 --dry_run           # every command and the patch budget, nothing run
    python scripts/sweep.py patches-cpu --smoke                # the same chain, tiny, on the CPU, in seconds
    python scripts/sweep.py --help                             # the presets, one line each

Built on scripts/reproduce.py: main.py and evaluate.py run in this process, their flags parsed by
their own parsers and their commands printed as they run (from the folder sweep.py ran in, so each
can be rerun by hand). Each run trains in <--run_root>/<run> (default logs/sweep/<name>) with the
preset's flags, then --train_args; main.py writes every epoch's checkpoint save_models/<e>.pt, and
each evaluated epoch E (the checkpoint <E - 1>.pt) is evaluated by evaluate.py with the preset's
settings, then --eval_args, into save_models/<E - 1>.eval.json, on the data the checkpoint was
trained on (evaluate.py's default for --data and --data_dir; --eval_args may name others). What
the sweep sets itself cannot come through --train_args or --eval_args (--output_dir, --resume,
--device, --train_epochs, --max_steps and every flag a run of the preset sets, such as --num_patches
and --epoch; --ckpt, --random_init, --output): each is refused in one line before anything runs.

Run again, the same command continues: a finished run is not trained again, a stopped one is
continued with main.py --resume, an evaluation whose result is there for the same checkpoint content
and protocol is reused. The result file is written after every run with everything known; an
earlier one is kept as <name>.json.N, never overwritten. Each run's curves also go to TensorBoard, in
<run folder>/sweep_curves: eval/knn_top1 and eval/linear_top1 against the epoch, and
eval_by_patches/… against the patches seen. The plot needs matplotlib, an optional dependency (pip
install matplotlib): without it one line says so, and the result file is written all the same.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if __name__ == "__main__":  # first: Ctrl-C while the modules below load ends in one line, status 130
    from plumbing.errors import interrupt_in_one_line
    interrupt_in_one_line()

import torch  # noqa: E402

import evaluate as eval_entry  # noqa: E402
import main as train_entry  # noqa: E402
from plumbing import checkpoint as ckpt  # noqa: E402
from plumbing.cli import ArgumentParser, run_cli  # noqa: E402
from plumbing.errors import Stopped, UserError  # noqa: E402
from plumbing.files import TensorBoard, check_writable, write_or_print  # noqa: E402
from scripts.reproduce import (  # noqa: E402
    SMOKE_EVAL,
    SMOKE_TRAIN,
    command_line,
    continuation,
    device_name,
    evaluate_once,
    flags,
    keep_earlier,
    parse,
    refuse_own_flags,
    run,
    split_flags,
)
from scripts.sweep_plot import plot  # noqa: E402
from scripts.sweeps import SWEEPS, Sweep, SweepRun  # noqa: E402

SMOKE_EPOCHS = 2  # --smoke: the preset's first and last runs (its two ends), two epochs each, both evaluated
CURVES = "sweep_curves"  # the TensorBoard folder of a run's evaluations, inside its run folder

# evaluate.py's flags that the sweep sets itself, and what to do instead.
OWN_EVAL = {"ckpt": "the sweep evaluates its runs' epoch checkpoints: evaluate another one with evaluate.py itself",
            "random_init": "the sweep evaluates trained runs: evaluate the baseline with evaluate.py --random_init",
            "output": "each evaluation writes save_models/<epoch>.eval.json in its run folder; pass --out for the "
                      "sweep's result file",
            "device": "pass sweep.py --device instead"}


def get_args_parser() -> argparse.ArgumentParser:
    presets = "\n".join(textwrap.fill(sweep.description, 110, initial_indent=f"  {name:<19}",
                                      subsequent_indent=" " * 21) for name, sweep in SWEEPS.items())
    parser = ArgumentParser("EMP-SSL sweep", formatter_class=argparse.RawDescriptionHelpFormatter,
                            description="Train a named grid of runs, evaluate each after the epochs its preset "
                                        "names (kNN and linear top-1), and plot the learning curves.",
                            epilog=f"presets (scripts/sweeps.py):\n{presets}")
    parser.add_argument("name", help="the preset, one of: " + ", ".join(SWEEPS))
    parser.add_argument("--data_dir", type=Path, default=None,
                        help="folder of the data set (default: the preset's, data/cifar10-slice for patches-cpu, "
                             "else data)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--train_args", default="", help="extra main.py flags for every run, placed last, e.g. "
                        "\"--augment pil\" or \"--data cifar10\"")
    parser.add_argument("--eval_args", default="", help="extra evaluate.py flags for every evaluation, placed last, "
                        "e.g. \"--forward_bs 512\"; --data and --data_dir default to the checkpoint's")
    parser.add_argument("--out", type=Path, default=Path("results"),
                        help="folder of <name>.json and <name>.png (%(default)s); an earlier <name>.json there is "
                             "kept as <name>.json.N, never overwritten")
    parser.add_argument("--run_root", type=Path, default=None,
                        help="folder of the runs, one folder each (default: logs/sweep/<name>, or <name>-smoke); "
                             "runs already there are continued, so pass a new one to train afresh")
    parser.add_argument("--dry_run", action="store_true", help="print every command and the patch budget, run nothing")
    parser.add_argument("--smoke", action="store_true",
                        help=f"the same chain on synthetic data, on the CPU, at a tiny size (the first and the "
                             f"last run, {SMOKE_EPOCHS} epochs each; seconds); writes <name>.smoke.json with \"smoke\": true")
    return parser


@dataclass(frozen=True)
class Evaluation:
    """One evaluated epoch of a run: the epoch (1-based: checkpoint <epoch - 1>.pt) and evaluate.py's argv."""

    epoch: int
    checkpoint: Path
    argv: list[str]

    @property
    def output(self) -> Path:
        return parse(eval_entry, self.argv).output


@dataclass(frozen=True)
class RunPlan:
    """What one run of a sweep runs: main.py's argv (with --resume when its folder holds it) and its evaluations."""

    run: SweepRun
    run_dir: Path
    train: list[str]
    evaluations: list[Evaluation]

    @property
    def finished(self) -> bool:
        """Has the run written its last epoch's checkpoint? Then main.py does not run again."""
        return (self.run_dir / ckpt.CHECKPOINT_DIR / f"{self.run.epochs - 1}.pt").is_file()


@dataclass(frozen=True)
class Plan:
    sweep: Sweep
    runs: list[RunPlan]
    run_root: Path
    result: Path


def preset(args: argparse.Namespace) -> Sweep:
    """The preset named by args.name; with --smoke, its first and last runs (e.g. EMP-SSL and VICReg,
    the fewest and the most patches) at reproduce.py's smoke size."""
    sweep = SWEEPS.get(args.name)
    if sweep is None:
        raise UserError(f"unknown sweep {args.name!r}: choose one of {', '.join(SWEEPS)} (see --help)")
    if not args.smoke:
        return sweep
    runs = tuple(SweepRun(run.name, {**run.flags, "epoch": SMOKE_EPOCHS,
                                     "num_patches": min(run.num_patches, int(SMOKE_TRAIN["num_patches"]))})
                 for run in (sweep.runs[:1] + sweep.runs[1:][-1:]))
    evaluation = {flag.removeprefix("--"): value for flag, value in zip(SMOKE_EVAL[::2], SMOKE_EVAL[1::2])}
    return replace(sweep, name=f"{sweep.name}.smoke", settings={**sweep.settings, **SMOKE_TRAIN}, runs=runs,
                   evaluation=evaluation)


def device_of(args: argparse.Namespace) -> str:
    return "cpu" if args.smoke else args.device


def own_train_flags(run: SweepRun) -> dict[str, str]:
    """main.py's flags that the sweep sets itself ({dest: what to do instead})."""
    whole = "every run trains its whole schedule, so that the sweep can evaluate it: drop it (--smoke runs the " \
            "whole chain in seconds)"
    setting = f"the preset sets it for each run ({run.name}: {shlex.join(flags(run.flags))}): choose another " \
              f"preset, or train such a run with main.py itself"
    return {"output_dir": "pass sweep.py --run_root instead (each run trains in <run_root>/<run>)",
            "resume": "drop it: sweep.py continues each run by itself", "device": "pass sweep.py --device instead",
            "train_epochs": whole, "max_steps": whole, **{key: setting for key in run.flags}}


def plan_run(args: argparse.Namespace, sweep: Sweep, run: SweepRun, run_root: Path) -> RunPlan:
    """One run's commands, checked by the entry points' parsers before anything runs."""
    run_dir, device = run_root / run.name, device_of(args)
    fixed = flags({**sweep.settings, **run.flags}) + ["--data_dir", str(args.data_dir or sweep.data_dir),
                                                      "--device", device, "--output_dir", str(run_dir)]
    extra_train, extra_eval = split_flags(args.train_args, "--train_args"), split_flags(args.eval_args, "--eval_args")
    refuse_own_flags(train_entry, fixed, extra_train, own_train_flags(run), "--train_args")
    train = fixed + extra_train
    train += continuation(parse(train_entry, train), run_dir, "--run_root")
    common = ["--device", device, *flags(sweep.evaluation)]  # --data, --data_dir: evaluate.py takes the checkpoint's
    evaluations = []
    for epoch in run.evaluated_epochs():
        checkpoint = run_dir / ckpt.CHECKPOINT_DIR / f"{epoch - 1}.pt"
        ours = ["--ckpt", str(checkpoint), *common, "--output", str(checkpoint.with_suffix(".eval.json"))]
        refuse_own_flags(eval_entry, ours, extra_eval, OWN_EVAL, "--eval_args")
        evaluations.append(Evaluation(epoch, checkpoint, ours + extra_eval))
    return RunPlan(run, run_dir, train, evaluations)


def make_plan(args: argparse.Namespace) -> Plan:
    sweep = preset(args)
    run_root = args.run_root or Path("logs") / "sweep" / sweep.name.replace(".", "-")
    return Plan(sweep, [plan_run(args, sweep, run, run_root) for run in sweep.runs], run_root,
                args.out / f"{sweep.name}.json")


def patch_budget(plan: Plan) -> str:
    """The sweep's patch budget, as a shell comment: Σ P × epochs over the runs, and in patches."""
    budgets, patches = [], 0
    for run_plan in plan.runs:
        trained = parse(train_entry, run_plan.train)
        images = min(trained.train_subset or plan.sweep.images, plan.sweep.images)
        budgets.append(trained.num_patches * trained.epoch)
        patches += budgets[-1] * images
    return (f"# patch budget: {sum(budgets)} patch-epochs (P × epochs: {' + '.join(map(str, budgets))}) over "
            f"{len(budgets)} runs, {patches:,} patches at {images:,} training images an epoch")


def checkpoint_facts(path: Path) -> dict[str, Any]:
    """What an epoch checkpoint says of its training: the steps, the training seconds up to its end
    (None for a checkpoint written before main.py kept them), the patches seen (steps · B · P)."""
    state = ckpt.load_checkpoint(path)
    args = state.get("args", {})
    return {"step": state["step"], "train_seconds": state.get("train_seconds"),
            "patches_seen": state["step"] * args["bs"] * args["num_patches"]}


def train_run(plan: RunPlan) -> None:
    """main.py for one run, unless it finished: then it is not trained again."""
    if plan.finished:
        print(f"{plan.run.name}: trained already ({plan.run.epochs} epochs), not trained again", flush=True)
        return
    run(train_entry, plan.train)


def drop_feature_cache(argv: list[str]) -> None:
    """Remove the features evaluate.py cached for the checkpoint it evaluated with argv, once its
    result file is written: the sweep reuses that file, and a sweep's many checkpoints would each
    keep their own (about 1 GB for a ResNet-18's 4096-d features of CIFAR-10)."""
    args = parse(eval_entry, argv)
    for path in (args.cache_dir or args.ckpt.parent).glob(f"{args.ckpt.name}.*.features"):
        path.unlink()


def log_point(writer: TensorBoard, point: dict[str, Any]) -> None:
    """One evaluated epoch's top-1 to TensorBoard, against the epoch and against the patches seen."""
    for probe in ("knn", "linear"):
        if point[f"{probe}_top1"] is not None:
            writer.add_scalar(f"eval/{probe}_top1", point[f"{probe}_top1"], point["epoch"])
            writer.add_scalar(f"eval_by_patches/{probe}_top1", point[f"{probe}_top1"], point["patches_seen"])


def evaluate_run(plan: RunPlan) -> list[dict[str, Any]]:
    """Evaluate every evaluated epoch of a trained run (or reuse its result), and return the
    points of its curve; what was evaluated now goes to TensorBoard too."""
    points, writer = [], None
    for evaluation in plan.evaluations:
        if not evaluation.checkpoint.is_file():  # deleted: main.py cannot write it again for a trained run
            print(f"warning: {evaluation.checkpoint} is gone, so epoch {evaluation.epoch} of {plan.run.name} is "
                  f"left out (pass a new --run_root to train the run afresh)", file=sys.stderr, flush=True)
            continue
        output = evaluation.output
        before = output.stat().st_mtime_ns if output.is_file() else None
        evaluate_once(evaluation.argv)
        result = json.loads(output.read_text())
        point = {"epoch": evaluation.epoch, **checkpoint_facts(evaluation.checkpoint),
                 "knn_top1": result.get("knn", {}).get("top1"), "linear_top1": result.get("linear", {}).get("top1"),
                 "checkpoint": str(evaluation.checkpoint)}
        if output.stat().st_mtime_ns != before:  # evaluated now, not reused
            drop_feature_cache(evaluation.argv)
            writer = writer or TensorBoard(plan.run_dir / CURVES, "the curves are in the sweep's result file")
            log_point(writer, point)
        points.append(point)
    if writer is not None:
        writer.close()
    return points


def run_record(plan: RunPlan, points: list[dict[str, Any]]) -> dict[str, Any]:
    """A run in the result file: its name, the main.py flags that define it, its command and its curve."""
    trained = vars(parse(train_entry, plan.train))
    keys = sorted({*train_entry.RUN_DEFINING, *plan.run.flags, "data_dir"})
    return {"name": plan.run.name, "run_dir": str(plan.run_dir),
            "flags": json.loads(json.dumps({key: trained[key] for key in keys}, default=str)),
            "command": command_line(train_entry, plan.train), "epochs": points}


def summarise(plan: Plan, args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The result file: the sweep, the evaluation's settings (evaluate.py's protocol), the runs known so far."""
    settings = eval_entry.protocol(parse(eval_entry, plan.runs[0].evaluations[0].argv))
    settings.pop("ckpt")
    return {"sweep": args.name, "smoke": args.smoke, "description": plan.sweep.description, "eval": settings,
            "train_args": args.train_args, "eval_args": args.eval_args, "runs": runs,
            "env": {"device": device_name(device_of(args)), "torch": torch.__version__, "commit": ckpt.git_commit()}}


def main(args: argparse.Namespace) -> None:
    plan = make_plan(args)
    if args.dry_run:
        for run_plan in plan.runs:
            print(command_line(train_entry, run_plan.train))
            for evaluation in run_plan.evaluations:
                print(command_line(eval_entry, evaluation.argv))
        print(patch_budget(plan))
        return
    check_writable(args.out, "--out", "the result folder")  # before any training
    check_writable(plan.run_root, "--run_root", "the folder of the runs")
    keep_earlier(plan.result)  # this command's result file is then rewritten after every run
    runs: list[dict[str, Any]] = []
    for index, run_plan in enumerate(plan.runs, start=1):
        print(f"sweep {plan.sweep.name}: run {index} of {len(plan.runs)}, {run_plan.run.name} ({run_plan.run_dir})",
              flush=True)
        try:
            train_run(run_plan)
        except Stopped as stop:  # the runs before it are in the result file; this process exits with 130 or 143
            print(f"sweep: {stop} stopped the training of {run_plan.run.name}, so it was not evaluated: run the same "
                  f"sweep.py command again to continue it", file=sys.stderr, flush=True)
            raise
        runs.append(run_record(run_plan, evaluate_run(run_plan)))
        record = summarise(plan, args, runs)
        write_or_print(plan.result, json.dumps(record, indent=2) + "\n", "--out")
    picture = plan.result.with_suffix(".png")
    drawn = plot(record, picture)
    print(f"results: {plan.result}" + (f" and {picture}" if drawn else ""))


if __name__ == "__main__":
    run_cli(main, get_args_parser())
