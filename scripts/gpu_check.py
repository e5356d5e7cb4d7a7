"""The GPU check behind scripts/gpu_check.sh: one call that runs the fast path on real data end to
end, keeps every number it reached even if it is stopped, and ends with a verdict.

Stages, in this order; each is recorded in gpu_check.json with its status (ok or failed), its
wall-clock seconds and, when it failed, its one-line error. The file is rewritten after every
stage, and a failed stage does not stop the stages that do not need it:

1. versions: the GPU, its memory, the driver, torch, CUDA, cuDNN and the commit.
1b. memory_plan: the --patch_chunks plan of the CIFAR rows' steps (20 and 200 patches of 100 images,
   resnet18-cifar, float32 and bf16): the memory a step needs whole, and the K auto takes here.
2. no_sync: one step of the fast path (batched patches from images held on the device, bf16,
   channels_last, main.py's optimiser under the non-finite guard) after a warm-up, run under
   CUDA's sync debug mode "error" (on the CPU: the operators that would make a GPU wait, counted).
3. training: CIFAR-10's official one-epoch row (scripts/reproduce.py cifar10-1ep: --epoch 2, the
   checkpoint after epoch 1) on the fast path; every step's loss, read back from TensorBoard, and
   the steady patches/s, images/s and seconds per epoch on the data given.
4. evaluation: that checkpoint, 128 patches per image, kNN and the 100-epoch linear probe, in bf16
   with channels_last (--eval_precision fp32 for the official float32).
5. baseline: the same evaluation of a random-init encoder (needs no training).
6. benchmark: scripts/benchmark.py on the same data (--full on a GPU).

The table (printed at the end, and gpu_check.md) has one line per stage (status, seconds, what
it measured), then the verdict, each line PASS, FAIL or INFO:
- loss finite at every training step: every step's loss of the training stage (PASS: all finite);
- trained kNN top-1 ≥ random init + 20 points (5 with --tiny): evaluation against baseline;
- no synchronising call in a fast-path step: the no_sync stage found none;
- seconds per epoch on the data given ≤ 20: the training stage's steady patches/s turned into
  seconds per epoch, with images/s and patches/s (PASS/FAIL on a GPU at full size, else INFO);
- top-1 beside the published 84.2: the row's linear (final and best over test epochs) and kNN
  top-1 (INFO; one epoch on JPEG-compressed CIFAR-10 is expected a little below it).

Small outputs go to <out>/attempt-N/: gpu_check.json, gpu_check.md (the table) and
gpu_check.log (everything printed), so that folder alone can be copied off a machine.
Checkpoints and feature caches go to <work_dir>/attempt-N/, decoded images to
<work_dir>/pixel_cache/ (unless $EMP_SSL_CACHE names another folder); both folders are checked
writable before any stage (a file in the way or a read-only folder is one line). Every call starts
attempt N + 1: nothing is overwritten and a retry never waits on an old result. --tiny runs the
same chain on the CPU at toy sizes (under a minute). The exit status is 0 when every stage ran
and every check passed, 1 otherwise.

Usage:
    bash scripts/gpu_check.sh --data_dir /data/cifar10          # ImageFolder tree or torchvision's CIFAR-10
    bash scripts/gpu_check.sh --tiny --data_dir /data/cifar10   # the same chain on the CPU, toy sizes
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if __name__ == "__main__":  # first: Ctrl-C while the modules below load ends in one line, status 130
    from plumbing.errors import interrupt_in_one_line
    interrupt_in_one_line()

import torch  # noqa: E402

import evaluate as eval_entry  # noqa: E402
import main as train_entry  # noqa: E402
from build import build_encoder, step_memory_plan, training_patches  # noqa: E402
from dataset.catalog import build_dataset, largest_balanced_subset  # noqa: E402
from engine import NonFiniteGuard, StepLog  # noqa: E402
from plumbing.checkpoint import git_commit  # noqa: E402
from plumbing.cli import ArgumentParser, run_cli  # noqa: E402
from plumbing.device import resolve_device  # noqa: E402
from plumbing.errors import UserError, one_line  # noqa: E402
from plumbing.files import check_writable, failure_cause, write_text  # noqa: E402
from plumbing.host_sync import HostSyncs, refuse_syncs  # noqa: E402
from plumbing.speed import AMP_DTYPES  # noqa: E402
from scripts import benchmark, reproduce  # noqa: E402
from scripts.rows import ROWS  # noqa: E402

ROW = "cifar10-1ep"
FAST = ["--augment", "batched", "--precision", "bf16", "--channels_last"]
# --tiny: a few hundred images and a few steps, whatever the data (the synthetic set by default).
TINY_IMAGES = 1600  # the class-balanced training images of --tiny
TINY_TRAIN = ["--train_subset", str(TINY_IMAGES), "--bs", "32", "--num_patches", "8", "--hidden_dim", "512",
              "--z_dim", "128"]
TINY_EVAL = ["--train_subset", "640", "--test_subset", "200", "--test_patches", "8", "--linear_epochs", "10"]
FULL_EVAL = ["--eval_bs", "100", "--forward_bs", "12800"]  # 128 patches of 100 images per forward
WARMUP_STEPS = 3  # before the checked step: cuDNN autotuning, the epoch's order copied to the device
KNN_MARGIN = {"full": 20.0, "tiny": 5.0}  # points of kNN top-1 a trained encoder must gain over random init
EPOCH_TARGET_S = 20.0  # seconds per CIFAR-10 epoch on one H200 (the target; checked at full size on a GPU)


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("bash scripts/gpu_check.sh", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=None,
                        help="CIFAR-10 as an ImageFolder tree (train/<class>/*.jpg and test/ or val/) or as "
                             "torchvision stores it (cifar-10-batches-py/ inside); default: the built-in "
                             "synthetic set")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"),
                        help="folder of the attempts' small outputs: <out>/attempt-N/ (default: %(default)s)")
    parser.add_argument("--work_dir", type=Path, default=None,
                        help="folder of checkpoints, feature caches and decoded images: <work_dir>/attempt-N/ "
                             "(default: <out>/work)")
    parser.add_argument("--eval_precision", default="bf16", choices=("bf16", "fp32"),
                        help="precision of the evaluation forward, with channels_last (default: %(default)s; "
                             "fp32 is the official evaluation)")
    parser.add_argument("--workers", type=int, default=8,
                        help="DataLoader workers of the benchmark's pil path (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true",
                        help="the same chain on the CPU at toy sizes: a few hundred images, a few steps")
    return parser


class Log:
    """A log file written line by line; the first fault (a full disk) is one warning on `stderr`,
    after which the log is left as it stands and printing goes on."""

    def __init__(self, path: Path, stderr: TextIO) -> None:
        self.path, self.stderr = path, stderr
        self.file: TextIO | None = open(path, "a", encoding="utf-8", buffering=1)  # closed by logged()

    def write(self, text: str) -> None:
        self._try(lambda file: file.write(text))

    def close(self) -> None:
        self._try(lambda file: file.close())
        self.file = None

    def _try(self, call: Callable[[TextIO], Any]) -> None:
        if self.file is None:
            return
        try:
            call(self.file)
        except OSError as err:
            self.file = None  # closing it would meet the same fault
            print(f"warning: cannot write {self.path} ({failure_cause(err)}); printing goes on without it",
                  file=self.stderr, flush=True)


class Tee:
    """A text stream that writes to a stream and to a log."""

    def __init__(self, stream: TextIO, log: Log) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextmanager
def logged(path: Path) -> Iterator[None]:
    """Everything printed to stdout and stderr while entered is also written to path."""
    out, err = sys.stdout, sys.stderr
    log = Log(path, err)
    sys.stdout, sys.stderr = Tee(out, log), Tee(err, log)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
        log.close()


def new_attempt(folder: Path) -> Path:
    """folder/attempt-N, created, with N one more than the highest attempt already there."""
    numbers = [int(m.group(1)) for p in folder.glob("attempt-*") if (m := re.fullmatch(r"attempt-(\d+)", p.name))]
    attempt = folder / f"attempt-{max(numbers, default=0) + 1}"
    attempt.mkdir(parents=True)
    return attempt


def data_flags(data_dir: Path | None) -> list[str]:
    """main.py's data flags for --data_dir: CIFAR-10 (no download), an image folder, or synthetic."""
    if data_dir is None:
        return ["--data", "synthetic"]
    if (data_dir / "cifar-10-batches-py").is_dir():
        return ["--data", "cifar10", "--data_dir", str(data_dir), "--no-download"]
    if (data_dir / "train").is_dir():
        return ["--data", "imagefolder", "--data_dir", str(data_dir)]
    raise UserError(f"{data_dir} holds neither cifar-10-batches-py/ nor train/: point --data_dir at CIFAR-10 "
                    f"as torchvision stores it or at an ImageFolder tree, or leave it out for the synthetic set")


def refuse_small_data(data_dir: Path | None, tiny: bool) -> None:
    """Refuse, before anything runs, a --data_dir that is not CIFAR-10 or an image folder, or that
    holds too few training images for the check (--tiny: a class-balanced TINY_IMAGES; else one
    batch of the row), in gpu_check's own flags: its stages would name main.py's."""
    flags = data_flags(data_dir)
    if data_dir is None:
        return
    targets = build_dataset(flags[1], data_dir, "train", download=False).targets
    usable, need = (largest_balanced_subset(targets), TINY_IMAGES) if tiny else (len(targets), ROWS[ROW].bs)
    if usable < need:
        what = (f"at most {usable:,} of them class-balanced, and --tiny trains on {need:,}" if tiny else
                f"and the check trains in batches of {need}")
        raise UserError(f"--data_dir {data_dir} holds {len(targets):,} training images, {what}: point --data_dir at "
                        f"CIFAR-10 (50,000 training images), or leave it out for the built-in synthetic set")


def make_plan(args: argparse.Namespace, work: Path, out: Path) -> reproduce.Plan:
    """The row's training, evaluation and baseline commands on the fast path and on the data given."""
    train = [*FAST, *data_flags(args.data_dir), *(TINY_TRAIN if args.tiny else [])]
    evaluate = ["--augment", "batched", "--precision", args.eval_precision, "--channels_last",
                *(TINY_EVAL if args.tiny else FULL_EVAL)]
    argv = [ROW, "--out", str(out), "--run_dir", str(work / "run"), "--train_args", shlex.join(train),
            "--eval_args", shlex.join(evaluate), *(["--smoke"] if args.tiny else [])]
    return reproduce.make_plan(reproduce.get_args_parser().parse_args(argv))


def versions() -> dict[str, Any]:
    """GPU name and memory, driver, torch, CUDA and cuDNN versions (None where there is no GPU)."""
    gpu = torch.cuda.is_available()
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        driver = None
    return {"gpu": torch.cuda.get_device_name(0) if gpu else None,
            "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if gpu else None,
            "driver": driver, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": str(torch.backends.cudnn.version()) if gpu else None, "git_commit": git_commit()}


def check_no_sync(plan: reproduce.Plan) -> dict[str, Any]:
    """Run the row's training step WARMUP_STEPS times, then once more watched: under CUDA's sync
    debug mode "error" on a GPU (the first synchronising call raises), else with the operators
    that would synchronise counted. The step is main.py's (the patches, main.build_training's
    parts, engine.train_step, the schedule, the values queued for the next read), built from the
    row's flags. Returns what was found (an empty list: none)."""
    args = reproduce.parse(train_entry, plan.train)
    device = resolve_device(args.device)
    batches = training_patches(args, device)
    training = benchmark.fresh_training(args, device, batches.steps_per_epoch)
    guard = NonFiniteGuard(args.skip_nonfinite, device)
    log = StepLog(None, batches.steps_per_epoch + 1, guard, args.num_patches * args.bs)
    batches.set_epoch(0)
    train = benchmark.training_step(training, iter(batches), guard)

    def step() -> None:
        lr = training.optimizer.param_groups[0]["lr"]
        stats = train()
        log.add(training.step, lr, stats)

    for _ in range(WARMUP_STEPS):
        step()
    if device.type != "cuda":
        with HostSyncs() as counter:
            step()
        return {"device": str(device), "method": "operators that would synchronise, counted on the CPU",
                "syncs": counter.syncs}
    torch.cuda.synchronize(device)
    try:
        with refuse_syncs():
            step()
        syncs = []
    except RuntimeError as err:
        syncs = [one_line(err)]
    torch.cuda.synchronize(device)
    return {"device": torch.cuda.get_device_name(device), "method": 'CUDA sync debug mode "error"', "syncs": syncs}


def memory_plans(tiny: bool) -> dict[str, Any]:
    """The --patch_chunks plan of the CIFAR rows' steps on this device (20 and 200 patches of 100
    images, main.py's encoder, float32 and bf16): the memory a step needs whole and the K auto
    takes. --tiny: toy sizes on the CPU."""
    device = resolve_device("cpu" if tiny else "auto")
    size = ["--arch", "resnet10-cifar", "--hidden_dim", "64", "--z_dim", "32", "--bs", "16"] if tiny else []
    args = train_entry.get_args_parser().parse_args(["--data", "cifar10", *size])  # bs 100 by default
    torch.manual_seed(args.seed)
    encoder = build_encoder(args, device)
    plans = {}
    for precision in AMP_DTYPES:
        for patches in (4, 20) if tiny else (20, 200):
            plan = step_memory_plan(argparse.Namespace(**{**vars(args), "precision": precision,
                                                          "num_patches": patches}), encoder, device, args.bs)
            k = plan.smallest_fit()
            plans[f"{patches} patches, {precision}"] = {"gib_at_k1": plan.need(1) / 2**30,
                                                         "free_gib": plan.available / 2**30, "auto_k": k,
                                                         "line": plan.describe(k) if k else
                                                         f"{plan.summary()}; no slices of two patches fit"}
    return {"arch": args.arch, "images": args.bs, "plans": plans}


def training_curve(run_dir: Path) -> dict[str, Any]:
    """Every step's loss and the steady throughput, read back from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    loss = [e.value for e in events.Scalars("train/loss")]
    rate = statistics.median(e.value for e in events.Scalars("train/patches_per_s"))  # the first read's warm-up aside
    return {"steps": len(loss), "loss_first": loss[0], "loss_last": loss[-1],
            "loss_finite": all(math.isfinite(v) for v in loss), "patches_per_s": rate}


def run_training(plan: reproduce.Plan) -> dict[str, Any]:
    """The row's training; its curve and its speed on the data given."""
    seconds = reproduce.run(train_entry, plan.train)
    args = reproduce.parse(train_entry, plan.train)
    curve = training_curve(args.output_dir)
    per_step = args.num_patches * args.bs
    return {"data": args.data, "data_dir": str(args.data_dir), "wall_seconds": seconds, **curve,
            "images_per_s": curve["patches_per_s"] / args.num_patches,
            "s_per_epoch": curve["steps"] * per_step / curve["patches_per_s"],  # the row trains one epoch
            "num_patches": args.num_patches, "bs": args.bs}


def run_evaluation(argv: list[str], output: Path) -> dict[str, Any]:
    """One evaluate.py run; the numbers of its result file."""
    reproduce.run(eval_entry, argv)
    result = json.loads(output.read_text())
    linear = result.get("linear", {})
    return {"knn_top1": result["knn"]["top1"], "linear_top1_final": linear.get("top1"),
            "linear_top1_best_over_test_epochs": linear.get("best_top1_over_test_epochs (official reporting)"),
            "test_patches": result["test_patches"], "precision": result["precision"],
            "channels_last": result.get("channels_last"), "parts_seconds": result["seconds"]}


def run_benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """scripts/benchmark.py on the data given: --full on a GPU, toy sizes with --tiny; its JSON."""
    out = work / "benchmark.json"
    data = data_flags(args.data_dir)[:4]  # --data and --data_dir (the benchmark never downloads)
    size = ["--tiny", "--device", "cpu", "--steps", "2", "--warmup", "1"] if args.tiny else ["--full"]
    workers = 0 if args.tiny else args.workers  # --tiny: no worker start-up in the pil path
    argv = [*size, *data, "--workers", str(workers), "--precision", "bf16", "--channels_last", "--out", str(out)]
    print(f"$ python scripts/benchmark.py {shlex.join(argv)}", flush=True)
    benchmark.main(benchmark.get_args_parser().parse_args(argv))
    return json.loads(out.read_text())


def run_stage(record: dict[str, Any], name: str, work: Callable[[], dict[str, Any]]) -> None:
    """Run one stage into record["stages"][name]: its result, status and seconds; a failure is
    recorded with its one-line error (the traceback goes to the log) and does not propagate."""
    print(f"\n== {name} ==", flush=True)
    tick = time.perf_counter()
    try:
        stage = {"status": "ok", **work()}
    except Exception as err:  # noqa: BLE001 - every failure is recorded; the next stages still run
        if not isinstance(err, UserError):
            traceback.print_exc()
        stage = {"status": "failed", "error": one_line(err, typed=not isinstance(err, UserError))}
        print(f"{name} failed: {stage['error']}", file=sys.stderr, flush=True)
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    record["stages"][name] = {**stage, "seconds": time.perf_counter() - tick}


def verdict(record: dict[str, Any]) -> list[dict[str, str]]:
    """The checks a reader can trust, each PASS, FAIL or INFO with what was measured."""
    stages, size = record["stages"], "tiny" if record["tiny"] else "full"

    def ok(name: str) -> dict[str, Any] | None:
        stage = stages.get(name, {})
        return stage if stage.get("status") == "ok" else None

    def check(name: str, passed: bool | None, measured: str) -> dict[str, str]:
        return {"check": name, "verdict": "INFO" if passed is None else "PASS" if passed else "FAIL",
                "measured": measured}

    train, trained, baseline, sync = ok("training"), ok("evaluation"), ok("baseline"), ok("no_sync")
    lines = [check("loss finite at every training step", bool(train and train["loss_finite"] and train["steps"]),
                   f"{train['steps']} steps, loss {train['loss_first']:.4g} → {train['loss_last']:.4g}" if train
                   else "training did not finish")]
    margin = KNN_MARGIN[size]
    lines.append(check(f"trained kNN top-1 ≥ random init + {margin:g} points",
                       bool(trained and baseline and trained["knn_top1"] >= baseline["knn_top1"] + margin),
                       f"{trained['knn_top1']:.2f} vs {baseline['knn_top1']:.2f}" if trained and baseline
                       else "an evaluation did not finish"))
    lines.append(check("no synchronising call in a fast-path step", bool(sync and not sync["syncs"]),
                       f"{len(sync['syncs'])} ({sync['method']}){': ' + sync['syncs'][0] if sync['syncs'] else ''}"
                       if sync else "the check did not finish"))
    gpu = record["stages"].get("versions", {}).get("gpu")
    if train:
        at_size = size == "full" and gpu is not None
        lines.append(check(f"seconds per epoch on the data given ≤ {EPOCH_TARGET_S:g} (target, full size on a GPU)",
                           train["s_per_epoch"] <= EPOCH_TARGET_S if at_size else None,
                           f"{train['s_per_epoch']:,.1f} s ({train['images_per_s']:,.0f} images/s, "
                           f"{train['patches_per_s']:,.0f} patches/s)"))
    if trained:
        published = ROWS[ROW].published
        lines.append(check(f"top-1 beside the published {published} (best over test epochs)", None,
                           f"linear {trained['linear_top1_final']:.2f} final / "
                           f"{trained['linear_top1_best_over_test_epochs']:.2f} best over test epochs, "
                           f"kNN {trained['knn_top1']:.2f}"))
    return lines


def stage_summary(name: str, stage: dict[str, Any]) -> str:
    """What one stage measured, in a table cell."""
    if stage["status"] != "ok":
        return stage["error"]
    if name == "versions":
        return (f"{stage['gpu'] or 'no GPU (CPU)'}, driver {stage['driver'] or '-'}; torch {stage['torch']}, "
                f"CUDA {stage['cuda'] or '-'}, cuDNN {stage['cudnn'] or '-'}")
    if name == "no_sync":
        return f"{len(stage['syncs'])} synchronising calls in one step ({stage['method']})"
    if name == "memory_plan":
        return "; ".join(f"{key}: ~{p['gib_at_k1']:,.1f} GiB whole, K = {p['auto_k']}"
                         for key, p in stage["plans"].items())
    if name == "training":
        return (f"{ROW} on {stage['data']} {stage['data_dir']}: {stage['steps']} steps, "
                f"{stage['s_per_epoch']:,.1f} s/epoch, {stage['images_per_s']:,.0f} images/s, "
                f"{stage['patches_per_s']:,.0f} patches/s; all of main.py {stage['wall_seconds']:,.1f} s")
    if name in ("evaluation", "baseline"):
        seconds = stage["parts_seconds"]
        return (f"{stage['test_patches']} patches, {stage['precision']}"
                f"{', channels_last' if stage['channels_last'] else ''}: kNN {stage['knn_top1']:.2f}, linear "
                f"{stage['linear_top1_final']:.2f} (best {stage['linear_top1_best_over_test_epochs']:.2f}); features "
                f"{seconds.get('features_train', 0) + seconds.get('features_test', 0):,.1f} s, linear probe "
                f"{seconds.get('linear', 0):,.1f} s")
    train = stage["train"]
    return (f"s per CIFAR-10 epoch (steps only), batched {train['batched']['s_per_cifar10_epoch']:,.1f} / pil "
            f"{train['pil']['s_per_cifar10_epoch']:,.1f}; model's share of a batched step "
            f"{train['batched']['model_share']:.0%}")


def table(record: dict[str, Any]) -> str:
    """The check as Markdown: one line per stage, then the verdict."""
    lines = ["| stage | status | s | what it measured |", "|---|---|---|---|"]
    for name, stage in record["stages"].items():
        lines.append(f"| {name} | {stage['status']} | {stage['seconds']:,.1f} | {stage_summary(name, stage)} |")
    lines += ["", "| check | verdict | measured |", "|---|---|---|"]
    lines += [f"| {line['check']} | {line['verdict']} | {line['measured']} |" for line in record["verdict"]]
    return "\n".join(lines)


def save(record: dict[str, Any], attempt: Path) -> None:
    """Rewrite gpu_check.json and gpu_check.md whole (atomically) with what has been reached."""
    record["verdict"] = verdict(record)
    then = "what each stage measured is printed above"
    write_text(attempt / "gpu_check.json", json.dumps(record, indent=2) + "\n", then)
    write_text(attempt / "gpu_check.md", table(record) + "\n", then)


def main(args: argparse.Namespace) -> None:
    if not args.tiny and not torch.cuda.is_available():
        raise UserError("no usable GPU: run this on a GPU machine, or pass --tiny for the CPU chain")
    refuse_small_data(args.data_dir, args.tiny)  # a wrong or too small --data_dir, before anything runs
    work_root = args.work_dir or args.out / "work"
    check_writable(args.out, "--out", "the output folder")  # and the big files' folder, before anything runs
    check_writable(work_root, "--work_dir", "the work folder")
    attempt = new_attempt(args.out)
    work = work_root / attempt.name
    os.environ.setdefault("EMP_SSL_CACHE", str(work_root / "pixel_cache"))
    record: dict[str, Any] = {"attempt": str(attempt), "work_dir": str(work), "tiny": args.tiny,
                              "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                              "stages": {}}
    with logged(attempt / "gpu_check.log"):
        print(f"attempt: {attempt} (small outputs), {work} (checkpoints, caches)", flush=True)
        plan = make_plan(args, work, attempt)
        stages = {"versions": versions, "memory_plan": lambda: memory_plans(args.tiny),
                  "no_sync": lambda: check_no_sync(plan),
                  "training": lambda: run_training(plan),
                  "evaluation": lambda: run_evaluation(plan.evaluate, plan.eval_json),
                  "baseline": lambda: run_evaluation(plan.baseline, plan.baseline_json),
                  "benchmark": lambda: run_benchmark(args, work)}
        for name, work_of_stage in stages.items():
            run_stage(record, name, work_of_stage)
            save(record, attempt)
        print("\n" + table(record))
        print(f"written: {attempt / 'gpu_check.json'}, {attempt / 'gpu_check.md'}, {attempt / 'gpu_check.log'}")
    failed = [s for s, stage in record["stages"].items() if stage["status"] != "ok"]
    failed += [line["check"] for line in record["verdict"] if line["verdict"] == "FAIL"]
    if failed:
        print(f"gpu check: FAIL ({'; '.join(failed)})", file=sys.stderr)
        sys.exit(1)
    print("gpu check: PASS")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
