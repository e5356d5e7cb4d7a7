"""Reproduce one row of the paper's results table with one command: train with the paper's
settings, evaluate the row's checkpoint and its random-init baseline with the official protocol
(bag-of-features over 128 patches, weighted kNN, 100-epoch linear probe), write results/<row>.json.

Usage:
    python scripts/reproduce.py cifar10-1ep --data_dir data                  # the official one-epoch row
    python scripts/reproduce.py cifar10-30ep --train_args "--augment batched --precision bf16 --channels_last"
    python scripts/reproduce.py cifar10-1ep --train_args "--data imagefolder --data_dir /data/cifar10-jpeg"
    python scripts/reproduce.py cifar100-10ep --dry_run                       # print the commands only
    python scripts/reproduce.py cifar10-1ep --smoke                           # the same chain, tiny, CPU, seconds
    python scripts/reproduce.py cifar10-30ep-to-cifar100                      # a transfer row: cifar10-30ep's run
    python scripts/results_table.py results/*.json                            # the README's table

main.py and evaluate.py run in this process, one after the other; their command lines (from the
folder reproduce.py ran in) are printed and recorded in the result file, so each step can be rerun
by hand, or under torchrun. Both evaluations read the data the training read (--data, --data_dir,
--download of the training flags, --train_args included) unless --eval_args says otherwise. What
reproduce.py sets itself cannot come through --train_args or --eval_args (--output_dir, --resume,
--device, the row's --epoch and --train_epochs, --max_steps; --ckpt, --random_init, --output): each
is refused in one line naming the flag to use, before anything runs; --out and --run_dir are
checked writable then too. Run again, the command continues the training run in --run_dir (a
finished one is only evaluated; an evaluation whose result file is there for the same checkpoint
content and protocol is reused, not run again, unless --eval_args --recompute), and writes a new
result file: an earlier one is kept as <row>.json.N (the next free N), never overwritten. A new
--run_dir trains afresh. A SIGTERM or Ctrl-C during the training
stops it with last.pt saved and ends reproduce.py there, with main.py's status (143 or 130),
without evaluating the half-trained run. Rows and protocols: scripts/rows.py.

A transfer row (`<source row>-to-<target>`) trains its source row exactly as `reproduce.py <source
row>` does, in the source row's run folder, unless the source checkpoint is there already (then it is
reused and main.py does not run); both evaluations read the target data set, in --target_data_dir.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if __name__ == "__main__":  # first: Ctrl-C while the modules below load ends in one line, status 130
    from plumbing.errors import interrupt_in_one_line
    interrupt_in_one_line()

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import evaluate as eval_entry  # noqa: E402
import main as train_entry  # noqa: E402
from dataset.catalog import DATA_DEFAULTS  # noqa: E402
from dataset.synthetic import generate  # noqa: E402
from features import TEST_PATCHES  # noqa: E402
from plumbing import checkpoint as ckpt  # noqa: E402
from plumbing.cli import ArgumentParser, run_cli  # noqa: E402
from plumbing.device import resolve_device  # noqa: E402
from plumbing.errors import Stopped, UserError  # noqa: E402
from plumbing.files import WriteFailed, check_writable, failure_cause, write_file, write_or_print  # noqa: E402
from probes import KNN_K, KNN_T, OFFICIAL_LINEAR  # noqa: E402
from scripts.rows import ALL_ROWS, Row  # noqa: E402

# --smoke: the row's schedule and checkpoint at a size that runs anywhere in seconds (one step per epoch).
SMOKE_TRAIN = {"data": "synthetic", "arch": "resnet10-cifar", "hidden_dim": 64, "z_dim": 32, "num_patches": 4,
               "bs": 16, "train_subset": 16, "workers": 0}
# --smoke of an ImageNet-kind row: a generated image folder of the row's image shape instead of the synthetic
# set, so that its patches are cut the ImageNet way (their kind resolves from the images), by the row's backbone,
# at 64 px (the crop code is the one of 224 px; 64 keeps a CPU at seconds). {data set: (width, height) in turn}.
SMOKE_FOLDERS = {"tinyimagenet": ((64, 64),), "imagenet100": ((400, 350), (375, 500))}
SMOKE_FOLDER_SHAPE = {"classes": 4, "train": 4, "val": 2}  # classes, images per class of each split: 16 and 8
SMOKE_PATCH_SIZE = 64
SMOKE_DATA = "smoke_data"  # the generated folder's name in the smoke run folder
SMOKE_EVAL = ["--train_subset", "20", "--test_subset", "20", "--test_patches", "2", "--linear_epochs", "3",
              "--workers", "0"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("EMP-SSL reproduction", description="Train and evaluate one row of the paper's "
                            f"results table. Rows: {', '.join(ALL_ROWS)}.")
    parser.add_argument("row", help="the row to reproduce (see scripts/rows.py)")
    parser.add_argument("--data_dir", type=Path, default=DATA_DEFAULTS["data_dir"],
                        help="folder of the data set (default: %(default)s)")
    parser.add_argument("--target_data_dir", type=Path, default=None,
                        help="a transfer row's folder of the target data set (default: --data_dir, which holds both "
                             "CIFARs as torchvision keeps them)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--train_args", default="", help="extra main.py flags, e.g. the fast path: "
                        "\"--augment batched --precision bf16 --channels_last\"; they come last, so they win")
    parser.add_argument("--eval_args", default="", help="extra evaluate.py flags, e.g. \"--forward_bs 4096\"; the data "
                        "flags default to the training's")
    parser.add_argument("--out", type=Path, default=Path("results"),
                        help="folder of the result file (%(default)s); an earlier result file of the row there is "
                             "kept as <name>.json.N, never overwritten")
    parser.add_argument("--run_dir", type=Path, default=None,
                        help="training run folder (default: logs/reproduce/<row>, or <row>-smoke; a transfer row's "
                             "is its source row's); a run already there is continued (a finished one only evaluated), "
                             "so pass a new one to train afresh")
    parser.add_argument("--dry_run", action="store_true", help="print the commands and stop")
    parser.add_argument("--smoke", action="store_true", help="the same chain on synthetic data, on the CPU, at a "
                        "tiny size (seconds): the built-in synthetic set, or for a Tiny ImageNet or ImageNet-100 row "
                        "a generated image folder of that data set's image sizes in the run folder, cut into "
                        f"ImageNet-kind patches of {SMOKE_PATCH_SIZE} px by the row's backbone; the result file is "
                        "<row>.smoke.json with \"smoke\": true and what it ran on (\"smoke_data\")")
    return parser


@dataclass
class Plan:
    """What one reproduction runs: main.py's flags, then evaluate.py's for the checkpoint and for the
    random-init baseline, and where each writes."""

    row: Row
    train: list[str]
    evaluate: list[str]
    baseline: list[str]
    checkpoint: Path
    eval_json: Path
    baseline_json: Path
    result: Path


def parse(entry: ModuleType, argv: list[str]) -> argparse.Namespace:
    """Parse argv with an entry point's parser; a bad flag (e.g. in --train_args) is a UserError."""
    parser = entry.get_args_parser()
    script = f"{entry.__name__}.py"

    def refuse(message: str) -> NoReturn:
        raise UserError(f"{script}: {message} (check --train_args / --eval_args against python {script} --help)")

    parser.error = refuse
    return parser.parse_args(argv)


def flags(values: dict[str, object]) -> list[str]:
    """{"bs": 100} → ["--bs", "100"]."""
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def official_eval() -> list[str]:
    """evaluate.py's flags of the official protocol: its defaults, taken from where they are
    defined (features.TEST_PATCHES, probes.KNN_K, KNN_T and OFFICIAL_LINEAR) and spelled out so
    that the recorded command shows them."""
    linear = {f"linear_{name}": value for name, value in asdict(OFFICIAL_LINEAR).items()}  # epochs, lr, momentum, …
    return flags({"test_patches": TEST_PATCHES, "knn_k": KNN_K, "knn_t": KNN_T, **linear})


def eval_data_flags(train: argparse.Namespace, row: Row, args: argparse.Namespace) -> list[str]:
    """evaluate.py's data flags (--data, --data_dir, --download): the data the training read, or a
    transfer row's target in --target_data_dir (else --data_dir). At --smoke size the training's data
    stands in for the target: there is no second synthetic set."""
    if args.target_data_dir is not None and row.target_data is None:
        raise UserError(f"--target_data_dir is for transfer rows, and {row.name} evaluates on the data it trained "
                        f"on: drop it (--eval_args \"--data_dir …\" evaluates on other data)")
    transfer = row.target_data is not None and not args.smoke
    data, data_dir = (row.target_data, args.target_data_dir or args.data_dir) if transfer else (train.data,
                                                                                                train.data_dir)
    return ["--data", str(data), "--data_dir", str(data_dir), "--download" if train.download else "--no-download"]


def model_flags(train: argparse.Namespace) -> list[str]:
    """evaluate.py's encoder flags for a training run's architecture and widths, and its --patch_kind
    and --patch_size where the training flags give them (else both resolve them from the same data):
    the random-init baseline sees the patches the checkpoint's evaluation sees."""
    patches = {name: getattr(train, name) for name in ("patch_kind", "patch_size") if getattr(train, name) is not None}
    return flags({"arch": train.arch, "hidden_dim": train.hidden_dim, "z_dim": train.z_dim, **patches})


def split_flags(text: str, flag: str) -> list[str]:
    """The flags of --train_args or --eval_args, split as a shell would; a quote left open is a UserError."""
    try:
        return shlex.split(text)
    except ValueError as err:  # "No closing quotation", "No escaped character"
        raise UserError(f"{flag} {text!r} cannot be split as a shell would ({err}): close its quotes") from err


def own_train_flags(row: Row) -> dict[str, str]:
    """main.py's flags that reproduce.py sets itself ({dest: what to do instead}): a --train_args that
    changes one would train a run reproduce.py does not evaluate, or could never finish the row."""
    schedule = (f"the row's checkpoint {row.checkpoint} is that of {shlex.join(row.schedule_flags())}: drop it, or "
                f"reproduce the row of that schedule")
    return {"output_dir": "pass reproduce.py --run_dir instead",
            "resume": "drop it: reproduce.py resumes the run in --run_dir by itself",
            "device": "pass reproduce.py --device instead", "epoch": schedule, "train_epochs": schedule,
            "max_steps": f"it would stop the training before the row's checkpoint {row.checkpoint} or change nothing: "
                         f"drop it (--smoke runs the whole chain in seconds)"}


# evaluate.py's flags that reproduce.py sets itself, and what to do instead.
OWN_EVAL = {"ckpt": "reproduce.py evaluates the row's checkpoint: evaluate another one with evaluate.py itself",
            "random_init": "drop it: reproduce.py evaluates the random-init baseline too",
            "output": "pass reproduce.py --out for the result file instead",
            "device": "pass reproduce.py --device instead"}


def refuse_own_flags(entry: ModuleType, ours: list[str], extra: list[str], own: dict[str, str], flag: str) -> None:
    """A UserError when the flags of `flag` (extra, placed after ours) change a value reproduce.py sets
    in ours, whatever their spelling (an abbreviation, --flag=value)."""
    before, after = parse(entry, ours), parse(entry, ours + extra)
    for dest, instead in own.items():
        if getattr(after, dest) != getattr(before, dest):
            value = "" if isinstance(getattr(after, dest), bool) else f" ({getattr(after, dest)})"
            raise UserError(f"{flag} may not set --{dest}{value}: {instead}")


def continuation(train: argparse.Namespace, run_dir: Path, flag: str = "--run_dir") -> list[str]:
    """["--resume"] when run_dir holds a run these training flags continue, [] when it holds none;
    a run trained with other flags is refused with reproduce.py's own flags in the message, and so
    is a run whose last.pt is gone (naming the `cp` from its newest epoch checkpoint); flag is the
    caller's flag of a new run folder, named in those refusals."""
    last = run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST
    if not last.exists():
        restore = ckpt.restore_last(run_dir)
        if restore:
            raise UserError(f"{run_dir} holds epoch checkpoints but no {ckpt.LAST}: {restore} and run this command "
                            f"again, or pass a new {flag} to train afresh")
        return []
    diff = train_entry.changed_flags(ckpt.load_checkpoint(last).get("args", {}), train)
    if diff:
        raise UserError(f"{run_dir} holds a run trained with {diff}: rerun with its --train_args to continue "
                        f"it, or pass a new {flag} to train afresh")
    return ["--resume"]


def smoke_settings(row: Row, run_dir: Path) -> dict[str, object]:
    """main.py's flags of a --smoke run of the row: SMOKE_TRAIN, and for a row of SMOKE_FOLDERS its image
    folder (write_smoke_folder) at SMOKE_PATCH_SIZE with the row's backbone."""
    if row.data not in SMOKE_FOLDERS:
        return SMOKE_TRAIN
    return {**SMOKE_TRAIN, "data": "imagefolder", "data_dir": run_dir / SMOKE_DATA, "arch": row.arch,
            "patch_size": SMOKE_PATCH_SIZE}


def write_smoke_folder(root: Path, sizes: tuple[tuple[int, int], ...]) -> None:
    """The image folder of an ImageNet-kind row's --smoke: root/{train,val}/<class>/<i>.png with
    SMOKE_FOLDER_SHAPE's classes and images, the built-in synthetic shapes (dataset.synthetic.generate,
    its first classes) rendered at the largest side and resized to `sizes` (width, height) in turn.
    Deterministic, so a file already there is kept: a rerun writes nothing."""
    side = max(max(size) for size in sizes)
    for split, train in (("train", True), ("val", False)):
        images, labels = generate(train, side, SMOKE_FOLDER_SHAPE[split])  # (10·n, side, side, 3), class-major order
        kept = [i for i, label in enumerate(labels) if label < SMOKE_FOLDER_SHAPE["classes"]]
        for n, i in enumerate(kept):
            path = root / split / f"class{labels[i]}" / f"{n}.png"
            if not path.is_file():
                image = Image.fromarray(images[i]).resize(sizes[n % len(sizes)], Image.Resampling.BILINEAR)
                write_file(path, partial(save_png, image), "pass reproduce.py a writable --run_dir")


def save_png(image: Image.Image, path: Path) -> None:
    """image as a PNG file at exactly path (whatever its suffix)."""
    image.save(path, format="PNG")


def smoke_data(row: Row, train: argparse.Namespace, evaluated: dict[str, Any], folder: Path) -> str:
    """What a --smoke run trained and evaluated on, in words (the result file's "smoke_data"): the data,
    the patches as the checkpoint's evaluation resolved them, the backbone. folder: the generated one."""
    if train.data == "imagefolder" and train.data_dir == folder and row.data in SMOKE_FOLDERS:
        sizes = " and ".join(f"{width}×{height}" for width, height in SMOKE_FOLDERS[row.data])
        shape = SMOKE_FOLDER_SHAPE
        data = (f"a generated image folder of {row.data}'s image sizes ({sizes}; {shape['classes']} classes, "
                f"{shape['classes'] * shape['train']} train / {shape['classes'] * shape['val']} val images of the "
                f"synthetic shapes) in {folder}")
    elif train.data == "synthetic":
        data = "the built-in synthetic set"
    else:
        data = f"{train.data} in {train.data_dir} (of --train_args)"
    return (f"{data}, standing in for {row.data}; {evaluated['patch_kind']}-kind patches of "
            f"{evaluated['patch_size']} px, {train.arch} at hidden {train.hidden_dim} / z {train.z_dim}")


def make_plan(args: argparse.Namespace) -> Plan:
    """Every command of the row, checked by the entry points' parsers before anything runs."""
    row = ALL_ROWS.get(args.row)
    if row is None:
        raise UserError(f"unknown row {args.row!r}: choose one of {', '.join(ALL_ROWS)}")
    name, trained_as = (f"{row.name}.smoke", f"{row.source_row or row.name}-smoke") if args.smoke else \
        (row.name, row.source_row or row.name)
    run_dir = args.run_dir or Path("logs") / "reproduce" / trained_as
    device = "cpu" if args.smoke else args.device
    settings = {**row.settings(), "data_dir": args.data_dir, **(smoke_settings(row, run_dir) if args.smoke else {})}
    fixed = flags(settings) + ["--device", device, "--output_dir", str(run_dir)]
    extra_train, extra_eval = split_flags(args.train_args, "--train_args"), split_flags(args.eval_args, "--eval_args")
    refuse_own_flags(train_entry, fixed + row.schedule_flags(), extra_train, own_train_flags(row), "--train_args")
    train = fixed + row.schedule_flags() + extra_train
    train += continuation(parse(train_entry, train), run_dir)
    trained = parse(train_entry, train)

    checkpoint = run_dir / ckpt.CHECKPOINT_DIR / row.checkpoint
    stem = checkpoint.stem + ("" if row.target_data is None else f".to-{row.target_data}")  # 29, 29.to-cifar100
    eval_json, baseline_json = (checkpoint.with_name(f"{stem}{kind}.eval.json") for kind in ("", ".random_init"))
    protocol = SMOKE_EVAL if args.smoke else official_eval()
    common = [*eval_data_flags(trained, row, args), "--device", device, *protocol]
    refuse_own_flags(eval_entry, ["--ckpt", str(checkpoint), *common, "--output", str(eval_json)], extra_eval,
                     OWN_EVAL, "--eval_args")
    evaluate = ["--ckpt", str(checkpoint), *common, "--output", str(eval_json), *extra_eval]
    baseline = ["--random_init", *model_flags(trained), *common, "--output", str(baseline_json), *extra_eval]
    for argv in (evaluate, baseline):
        parse(eval_entry, argv)
    return Plan(row=row, train=train, evaluate=evaluate, baseline=baseline, checkpoint=checkpoint, eval_json=eval_json,
                baseline_json=baseline_json, result=args.out / f"{name}.json")


def command_line(entry: ModuleType, argv: list[str]) -> str:
    """The shell command that runs the entry point with argv from the current folder."""
    return shlex.join(["python", os.path.relpath(ROOT / f"{entry.__name__}.py"), *argv])


def run(entry: ModuleType, argv: list[str]) -> float:
    """Run an entry point's main in this process; return its wall-clock seconds. Memory it held
    on the GPU is released before the next one starts."""
    print(f"$ {command_line(entry, argv)}", flush=True)
    tick = time.perf_counter()
    entry.main(parse(entry, argv))
    seconds = time.perf_counter() - tick
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return seconds


def earlier_evaluation(argv: list[str]) -> dict[str, Any] | None:
    """The result file evaluate.py with argv would write, when one is there for the same weights
    (the checkpoint's SHA-256) and the same protocol (evaluate.protocol); None when there is none,
    it differs, or argv asks for --recompute."""
    args = parse(eval_entry, argv)
    if args.recompute or not args.output.is_file():
        return None
    try:
        done = json.loads(args.output.read_text())
    except (OSError, ValueError):
        return None
    same = isinstance(done, dict) and done.get("protocol") == eval_entry.protocol(args) and \
        done.get("weights") == eval_entry.weights_identity(args)
    return done if same else None


def evaluate_once(argv: list[str]) -> float:
    """evaluate.py with argv, unless it already wrote its result for the same weights and protocol:
    then that result is reused, with a line that says so. The evaluation's seconds."""
    done = earlier_evaluation(argv)
    if done is None:
        return run(eval_entry, argv)
    print(f"reusing {parse(eval_entry, argv).output}: evaluated already for the same weights and protocol "
          f"(--eval_args --recompute evaluates again)", flush=True)
    return done["seconds"]["total"]


def train_once(plan: Plan) -> float:
    """main.py with the plan's flags, unless the plan is a transfer row whose source checkpoint is there
    already: then it is reused, with a line that says so. The training's seconds (0 when reused)."""
    if plan.row.source_row is not None and plan.checkpoint.is_file():
        print(f"reusing {plan.checkpoint}: {plan.row.source_row} trained it already (this transfer row only "
              f"evaluates it)", flush=True)
        return 0.0
    try:
        return run(train_entry, plan.train)
    except Stopped as stop:  # a half-trained run is not evaluated; this process exits with 130 or 143
        print(f"reproduce: {stop} stopped the training, so nothing was evaluated: run the same reproduce.py command "
              f"again to continue the training and evaluate it", file=sys.stderr, flush=True)
        raise


def keep_earlier(result: Path) -> None:
    """Move an earlier result file out of the way to <name>.N (the next free N), with a line that says
    so: a result file is never overwritten."""
    if not result.exists():
        return
    number = 1
    while result.with_name(f"{result.name}.{number}").exists():
        number += 1
    kept = result.with_name(f"{result.name}.{number}")
    try:
        os.replace(result, kept)
    except OSError as err:
        raise WriteFailed(kept, failure_cause(err, kept), f"{result} is unchanged; choose another --out") from err
    print(f"{result} held an earlier result: kept as {kept}")


def device_name(device: str) -> str:
    """The GPU's name, or "cpu"."""
    resolved = resolve_device(device)
    return torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else "cpu"


def transfer_fields(row: Row, source_data: str, target_data: str, smoke: bool) -> dict[str, str]:
    """A transfer row's own keys of the result file (rows.TRANSFER_FIELDS): the data sets as they ran."""
    words = f"the encoder of {row.source_row} (trained on {source_data}), frozen, evaluated on {target_data}"
    if smoke:
        words += (f"; --smoke: the source row's smoke run, evaluated on its own training data standing in for "
                  f"{row.target_data} (there is no second synthetic set): it only shows that the chain runs")
    return {"source_row": str(row.source_row), "source_data": source_data, "target_data": target_data,
            "transfer": words}


def summarise(plan: Plan, smoke: bool, seconds: dict[str, float]) -> dict[str, Any]:
    """The result file: the row, what ran, the published number, ours, the baseline and the times (and a
    transfer row's data sets)."""
    ours, baseline = (json.loads(path.read_text()) for path in (plan.eval_json, plan.baseline_json))
    train = parse(train_entry, plan.train)
    row = replace(plan.row, num_patches=train.num_patches, data=train.data,
                  target_data=plan.row.target_data and ours["data"])  # as they ran, --smoke's included
    transfer = {} if row.source_row is None else transfer_fields(plan.row, train.data, ours["data"], smoke)
    return {
        "row": row.name, "smoke": smoke, "protocol": row.protocol,
        "data": train.data, "arch": train.arch,
        "num_patches": train.num_patches, "bs": train.bs, "lr": train.lr, "schedule_epochs": train.epoch,
        "trained_epochs": row.trained_epochs, "checkpoint": str(plan.checkpoint), "resumed": train.resume,
        "published_linear_top1": row.published, "published_label": row.published_label,
        "linear_top1_final": ours["linear"]["top1"],
        "linear_top1_best_over_test_epochs": ours["linear"]["best_top1_over_test_epochs (official reporting)"],
        "knn_top1": ours["knn"]["top1"],
        "random_init_linear_top1_final": baseline["linear"]["top1"], "random_init_knn_top1": baseline["knn"]["top1"],
        "test_patches": ours["test_patches"],
        # Wall-clock of main.py in this process (data set loading included) over the epochs trained;
        # a resumed run's covers only what this invocation trained. A reused evaluation counts its own seconds.
        "train_seconds": seconds["train"], "train_seconds_per_epoch": seconds["train"] / row.trained_epochs,
        "eval_seconds": seconds["evaluate"], "random_init_eval_seconds": seconds["baseline"],
        "gpu": device_name(train.device), "torch": torch.__version__, "git_commit": ckpt.git_commit(),
        "commands": [command_line(train_entry, plan.train), command_line(eval_entry, plan.evaluate),
                     command_line(eval_entry, plan.baseline)], **transfer,
        **({"smoke_data": smoke_data(plan.row, train, ours, plan.checkpoint.parents[1] / SMOKE_DATA)} if smoke else {}),
    }


def main(args: argparse.Namespace) -> None:
    plan = make_plan(args)
    if args.dry_run:
        for entry, argv in ((train_entry, plan.train), (eval_entry, plan.evaluate), (eval_entry, plan.baseline)):
            print(command_line(entry, argv))
        return
    check_writable(args.out, "--out", "the result folder")  # before the training and the evaluations
    check_writable(plan.checkpoint.parents[1], "--run_dir", "the run folder")
    folder = plan.checkpoint.parents[1] / SMOKE_DATA
    if args.smoke and plan.row.data in SMOKE_FOLDERS and parse(train_entry, plan.train).data_dir == folder:
        write_smoke_folder(folder, SMOKE_FOLDERS[plan.row.data])
    seconds = {"train": train_once(plan)}
    if not plan.checkpoint.is_file():  # the flags that stop training early are refused: the run was past it
        step = ckpt.load_checkpoint(plan.checkpoint.with_name(ckpt.LAST)).get("step")
        raise UserError(f"training ended without {plan.checkpoint}: the run in {plan.checkpoint.parent.parent} "
                        f"(last.pt at step {step}) was already past that epoch's end, and that file is gone: it "
                        f"cannot be written again; pass a new --run_dir to train afresh")
    seconds["evaluate"] = evaluate_once(plan.evaluate)
    seconds["baseline"] = evaluate_once(plan.baseline)
    text = json.dumps(summarise(plan, args.smoke, seconds), indent=2)
    keep_earlier(plan.result)
    write_or_print(plan.result, text + "\n", "--out")
    print(f"results: {plan.result}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
