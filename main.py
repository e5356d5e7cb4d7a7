"""EMP-SSL training: many augmented patches per image, cosine-to-mean invariance and the Total
Coding Rate of each patch group (Tong, Chen, Ma, LeCun, arXiv 2304.03977).

Usage:
    python main.py --num_patches 20 --epoch 30          # CIFAR-10, the paper's setting
    torchrun --nproc_per_node 4 main.py --num_patches 20 --epoch 30   # 4 GPUs, same global --bs
    python main.py --data synthetic --arch resnet10-cifar --hidden_dim 512 --z_dim 128 \
        --num_patches 8 --bs 50 --epoch 1 --device cpu   # a first run on the built-in data

Exit status: 0 when the schedule (or --max_steps) ends; 2 for bad input or a non-finite loss; 130
after Ctrl-C and 143 after SIGTERM, which stop the run at a step boundary with last.pt saved.

One step, in order: this rank's patches (dataset/patch_sources.py) → engine.train_step (encoder, loss.py,
backward, the optimizer under the non-finite guard) → engine.fit (the epochs, every save).
"""
from __future__ import annotations

if __name__ == "__main__":  # first: Ctrl-C while the modules below load ends in one line, status 130
    from plumbing.errors import interrupt_in_one_line
    interrupt_in_one_line()

import argparse
import math
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from build import (
    build_criterion,
    build_encoder,
    build_monitor,
    build_optimizer,
    build_scheduler,
    step_memory_plan,
    training_patches,
)
from dataset import AUGMENTS, DATASETS
from dataset.catalog import (
    DATA_DEFAULTS,
    MIN_PATCH_SIZE,
    PATCH_KINDS,
    patch_size_flag,
    patches_before_the_flags,
    resolve_patches,
)
from dataset.patch_sources import DEFAULT_AUGMENT, DEFAULT_CROP_SCALE, crop_scale_flag
from engine import NonFiniteGuard, Schedule, StepLog, Training, fit, seed_everything
from features import KNNMonitor
from loss import LOSSES
from model import ARCHS, ENCODER_DEFAULTS
from optim import OPTIMIZERS
from plumbing import checkpoint as ckpt
from plumbing import distributed
from plumbing.cli import ArgumentParser, banner, default_workers, require, run_cli
from plumbing.device import resolve_device
from plumbing.errors import Stopped, UserError
from plumbing.files import TensorBoard, check_writable
from plumbing.memory_plan import MemoryPlan, check_slices, choose_chunks
from plumbing.pictures import log_patch_grids
from plumbing.preemption import Preemption, refuse_restart_after_stop
from plumbing.speed import AMP_DTYPES, compile_model

# Flags that define what a run computes: a resumed run must keep them.
RUN_DEFINING = ("data", "train_subset", "num_patches", "augment", "crop_scale", "patch_kind", "patch_size", "arch",
                "hidden_dim", "z_dim", "loss", "patch_sim", "tcr", "eps", "sim_coeff", "std_coeff", "cov_coeff", "bs",
                "optimizer", "lr", "wd", "lars_eta", "epoch", "seed", "precision", "patch_chunks")
# Run-defining flags newer than some checkpoints: the value a checkpoint without the key was trained with,
# or a function of the checkpoint's args that gives it (the patches: what its --data gave then).
BEFORE_THE_FLAG: dict[str, Any] = {"crop_scale": DEFAULT_CROP_SCALE, "loss": "emp", "sim_coeff": None,
                                   "std_coeff": None, "cov_coeff": None,
                                   "patch_kind": lambda saved: patches_before_the_flags(saved["data"]).kind,
                                   "patch_size": lambda saved: patches_before_the_flags(saved["data"]).size}
# Run-defining flags that a resumed run takes from its checkpoint when they are not given.
FROM_THE_RUN = ("patch_kind", "patch_size")


def chunks_flag(text: str) -> str:
    """--patch_chunks: "auto" or a positive integer (kept as text: "auto" is recorded as asked)."""
    if text != "auto" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"expected auto or a positive integer, got {text!r}")
    return text


class TrainingParser(ArgumentParser):
    """main.py's parser: --lr and --lars_eta default to the values of the chosen --optimizer
    (optim.OPTIMIZERS), and the coefficients of the chosen --loss to its own (loss.LOSSES), filled
    in as the flags are parsed, so that every reader of them (args.json, the checkpoints, the run
    folder's name, reproduce.py) sees the value the run uses; --lars_eta with an optimiser that has
    no trust ratio, and a coefficient of another objective than --loss, are refused."""

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        parsed, rest = super().parse_known_args(args, namespace)
        choice = OPTIMIZERS[parsed.optimizer]
        if parsed.lars_eta is not None and choice.eta is None:
            self.error(f"--lars_eta is the trust coefficient of --optimizer lars; {parsed.optimizer} has no trust "
                       f"ratio: drop --lars_eta")
        parsed.lr = choice.lr if parsed.lr is None else parsed.lr
        parsed.lars_eta = choice.eta if parsed.lars_eta is None else parsed.lars_eta
        self.fill_loss_flags(parsed)
        return parsed, rest

    def fill_loss_flags(self, parsed: argparse.Namespace) -> None:
        """The flags of --loss that were not given take its defaults; a flag that only another
        objective reads stays None, and is refused when given."""
        objective = LOSSES[parsed.loss]
        for name, other in LOSSES.items():
            for flag in other.defaults.keys() - objective.defaults.keys():
                if getattr(parsed, flag) is not None:
                    self.error(f"--{flag} is read by --loss {name}, not by --loss {parsed.loss}: drop --{flag}")
        for flag, default in objective.defaults.items():
            setattr(parsed, flag, default if getattr(parsed, flag) is None else getattr(parsed, flag))


def get_args_parser() -> argparse.ArgumentParser:
    parser = TrainingParser("EMP-SSL training", description="Train an EMP-SSL encoder; defaults are the official ones.")
    data = parser.add_argument_group("Data")
    data.add_argument("--data", default=DATA_DEFAULTS["data"], choices=DATASETS,
                      help="data set (official default: %(default)s)")
    data.add_argument("--data_dir", type=Path, default=DATA_DEFAULTS["data_dir"],
                      help="folder of the data set; CIFAR is downloaded here when missing; folder data sets "
                           "need <data_dir>/train and <data_dir>/val or test (default: %(default)s)")
    data.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                      help="download CIFAR into --data_dir when it is missing (default: %(default)s)")
    data.add_argument("--num_patches", type=int, default=100,
                      help="augmented patches per image, P (official default %(default)s; the paper's runs use 20)")
    data.add_argument("--train_subset", type=int, default=None,
                      help="train on a fixed, class-balanced subset of this many images (quick experiments)")
    data.add_argument("--workers", type=int, default=default_workers(),
                      help="DataLoader worker processes (default: %(default)s: 8, or the machine's cores if fewer)")
    data.add_argument("--augment", default=DEFAULT_AUGMENT, choices=tuple(AUGMENTS),
                      help="; ".join(f"{name}: {what}" for name, what in AUGMENTS.items()) + " (default: %(default)s)")
    data.add_argument("--crop_scale", type=crop_scale_flag, default=DEFAULT_CROP_SCALE, metavar="S",
                      help="the share of the image's area each patch covers, in (0, 1]: both ends of "
                           "RandomResizedCrop's scale range are S (official %(default)s)")
    data.add_argument("--patch_kind", default=None, choices=tuple(PATCH_KINDS),
                      help="how patches are cut: cifar (square crops, bilinear) or imagenet (aspect ratio 3/4..4/3, "
                           "bicubic) (default: from the data: cifar10, cifar100 and synthetic cifar, imagenet100 and "
                           "tinyimagenet imagenet; an image folder cifar when its training images are all 32×32, "
                           "else imagenet; a resumed run its own). With a named data set it overrides the official "
                           "kind (the start line says so): a study's choice, as training Tiny ImageNet at 64 px")
    data.add_argument("--patch_size", type=patch_size_flag, default=None, metavar="S",
                      help=f"patches are S×S pixels, at least {MIN_PATCH_SIZE} (default: from the data, as "
                           f"--patch_kind: " + ", ".join(f"{size} for {kind}" for kind, size in PATCH_KINDS.items()) +
                           ", each kind's official size; a resumed run its own)")
    data.add_argument("--skip_bad_images", action="store_true",
                      help="decode every image of a folder data set once and leave out unreadable ones "
                           "with a warning (default: stop with the file's name when one is met)")

    model = parser.add_argument_group("Model")
    model.add_argument("--arch", default=ENCODER_DEFAULTS["arch"], choices=ARCHS,
                       help="backbone (official default: %(default)s; resnet10-cifar is the small CPU net)")
    model.add_argument("--hidden_dim", type=int, default=ENCODER_DEFAULTS["hidden_dim"],
                       help="width of pre_feature (the evaluated representation) and of the projector (%(default)s)")
    model.add_argument("--z_dim", type=int, default=ENCODER_DEFAULTS["z_dim"],
                       help="dimension d of the projected embedding (%(default)s)")

    loss = parser.add_argument_group("Loss")
    emp, vicreg = LOSSES["emp"].defaults, LOSSES["vicreg"].defaults
    loss.add_argument("--loss", default="emp", choices=tuple(LOSSES),
                      help="; ".join(f"{name}: {objective.help}" for name, objective in LOSSES.items()) +
                           " (default: %(default)s). The coefficients below apply to the objective they name; "
                           "one of another objective is refused")
    loss.add_argument("--patch_sim", type=float, default=None,
                      help=f"--loss emp: weight of the invariance term (official {emp['patch_sim']:g})")
    loss.add_argument("--tcr", type=float, default=None,
                      help=f"--loss emp: weight of the total coding rate term (official {emp['tcr']:g})")
    loss.add_argument("--eps", type=float, default=None,
                      help=f"--loss emp: distortion ε of the coding rate, > 0 (official {emp['eps']:g})")
    loss.add_argument("--sim_coeff", type=float, default=None,
                      help=f"--loss vicreg: weight of the invariance term, the mean squared difference of patch "
                           f"pairs (published {vicreg['sim_coeff']:g})")
    loss.add_argument("--std_coeff", type=float, default=None,
                      help=f"--loss vicreg: weight of the variance hinge (published {vicreg['std_coeff']:g})")
    loss.add_argument("--cov_coeff", type=float, default=None,
                      help=f"--loss vicreg: weight of the covariance term (published {vicreg['cov_coeff']:g})")

    optim = parser.add_argument_group("Optim")
    optim.add_argument("--bs", type=int, default=100,
                       help="images per step, B, over all processes (split evenly among torchrun's ranks); "
                            "each step sees P·B patches (%(default)s)")
    optim.add_argument("--optimizer", default="lars", choices=tuple(OPTIMIZERS),
                       help="; ".join(f"{name}: {choice.help}" for name, choice in OPTIMIZERS.items()) +
                            " (default: %(default)s). Every one gets the same parameter groups: ≥2-d weights decay "
                            "by --wd, biases and normalisation weights do not decay")
    optim.add_argument("--lr", type=float, default=None,
                       help="base learning rate, cosine-annealed to 0 over every step of the run (default: " +
                            ", ".join(f"{choice.lr:g} for {name}" for name, choice in OPTIMIZERS.items()) +
                            "; 0.3 is the official)")
    optim.add_argument("--wd", type=float, default=1e-4, help="weight decay of ≥2-d weights (%(default)s)")
    optim.add_argument("--lars_eta", type=float, default=None,
                       help="trust coefficient η of --optimizer lars (default: " +
                            ", ".join(f"{choice.eta:g} for {name}" for name, choice in OPTIMIZERS.items()
                                      if choice.eta is not None) +
                            ", the official); refused with an optimiser that has no trust ratio")
    optim.add_argument("--epoch", type=int, default=30,
                       help="epochs; sizes the cosine schedule (official %(default)s)")
    optim.add_argument("--train_epochs", type=int, default=None,
                       help="train only the first N epochs of the --epoch schedule, which keeps its length (the "
                            "official one-epoch protocol: --epoch 2 --train_epochs 1)")
    optim.add_argument("--max_steps", type=int, default=None,
                       help="stop after this many steps in all (smoke runs); the schedule keeps its full length")

    logging = parser.add_argument_group("Logging")
    logging.add_argument("--dir", default="EMP-SSL-Training", help="folder under logs/ (official default %(default)s)")
    logging.add_argument("--msg", default="NONE", help="suffix of the run folder name (official default %(default)s)")
    logging.add_argument("--output_dir", type=Path, default=None,
                         help="run folder (default: logs/<dir>/patchsim<..>_numpatch<..>_bs<..>_lr<..>_<msg>)")
    logging.add_argument("--resume", action="store_true",
                         help="continue the run in the run folder from its save_models/last.pt")
    logging.add_argument("--log_every", type=int, default=10,
                         help="read the step values (loss, invariance, coding rate) from the device every N steps, "
                              "when the progress bar and the non-finite check act (TensorBoard still gets every step; "
                              "SIGTERM and Ctrl-C stop after the step under way) (%(default)s; 1 waits at every step)")
    logging.add_argument("--save_every_steps", type=int, default=None,
                         help="also write last.pt every N steps, so a killed run loses at most N steps "
                              "(default: at the end of every epoch and at a stop only)")

    monitor = parser.add_argument_group("Eval")
    monitor.add_argument("--eval_every", type=int, default=0,
                         help="every N epochs, log the weighted kNN top-1 of the test split against the training "
                              "split as eval/knn_top1 (default %(default)s: never; evaluate.py gives the protocol)")
    monitor.add_argument("--eval_patches", type=int, default=4,
                         help="patches per image in that kNN's bag-of-features, made by --augment "
                              "(default %(default)s; evaluate.py uses 128)")
    monitor.add_argument("--eval_subset", type=int, default=None,
                         help="that kNN uses a fixed class-balanced subset of this many images of each split "
                              "(default: all)")

    running = parser.add_argument_group("Running")
    running.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    running.add_argument("--seed", type=int, default=0,
                         help="seed of weights, data order and augmentation (%(default)s)")
    running.add_argument("--patch_chunks", type=chunks_flag, default="1",
                         help="run each step's batch in K slices along the patch axis: the loss and gradient of "
                              "the whole batch, activation memory about 1/K, each slice normalised by its own "
                              "BatchNorm statistics as on K GPUs under the official nn.DataParallel, cut as it "
                              "cut them (x.chunk(K): fewer slices where ⌈P·B/K⌉ patches fit fewer times; the "
                              "memory line says which) and of at least two patches each (K ≤ P·B/2; "
                              "docs/multi-gpu.md); "
                              "auto: the smallest K that fits, from a measurement before the first step "
                              "(default %(default)s: the plain step)")
    running.add_argument("--precision", default="fp32", choices=tuple(AMP_DTYPES),
                         help="fp32 (official, the default) or bf16 autocast for the encoder; the loss and the "
                              "coding rate stay float32")
    running.add_argument("--channels_last", action="store_true",
                         help="channels-last memory layout (faster convs on GPU)")
    running.add_argument("--compile", action="store_true", help="torch.compile the encoder (off by default)")
    running.add_argument("--deterministic", action="store_true",
                         help="PyTorch's deterministic algorithms: a resumed run is bit-identical to an "
                              "uninterrupted one on the CPU (slower on GPUs)")
    running.add_argument("--skip_nonfinite", type=int, default=0,
                         help="skip up to K steps whose loss is NaN or infinite, applying no update, before "
                              "stopping the run (default %(default)s: stop at the first)")

    dist_group = parser.add_argument_group("Distributed (under torchrun)")
    dist_group.add_argument("--dist_backend", default="auto", choices=("auto", "nccl", "gloo"),
                            help="process-group backend (%(default)s: nccl on GPUs, gloo on the CPU)")
    dist_group.add_argument("--dist_timeout", type=float, default=10.0,
                            help="minutes a process waits for the others (rank 0 downloading data or writing a "
                                 "checkpoint, a rank that died or hangs) before it stops with one line instead of "
                                 "hanging; also how long the ranks wait for each other to start (%(default)s; at "
                                 "most a week, 10080)")
    dist_group.add_argument("--sync_bn", action="store_true",
                            help="BatchNorm statistics over the global batch (SyncBatchNorm, GPUs only); off by "
                                 "default: the official nn.DataParallel normalised each GPU's share separately")
    return parser


MAX_DIST_TIMEOUT = 7 * 24 * 60  # minutes, a week: longer is a hang, and past ~1.4e12 Python's timedelta overflows


def validate_args(args: argparse.Namespace) -> None:
    """Refuse torchrun variables that do not make a launch (distributed.launch_from_env) and
    impossible flag values, before anything is built or written."""
    world = distributed.launch_from_env().world_size
    require([
        (args.num_patches >= 2, "--num_patches must be at least 2 (the invariance term compares patches)"),
        (args.bs >= 2, "--bs must be at least 2 (the coding rate and BatchNorm need several images)"),
        (args.eps is None or args.eps > 0, "--eps must be positive (it divides the coding rate's scale d/(B·eps))"),
        (args.epoch >= 1, "--epoch must be at least 1"),
        (args.lr > 0, "--lr must be positive"),
        (args.max_steps is None or args.max_steps >= 1, "--max_steps must be at least 1"),
        (args.train_epochs is None or 1 <= args.train_epochs <= args.epoch,
         "--train_epochs must be between 1 and --epoch (it stops the schedule early)"),
        (args.workers >= 0, "--workers must be 0 or more"),
        (args.save_every_steps is None or args.save_every_steps >= 1, "--save_every_steps must be at least 1"),
        (args.skip_nonfinite >= 0, "--skip_nonfinite must be 0 or more"),
        (args.log_every >= 1, "--log_every must be at least 1"),
        (not (args.compile and args.sync_bn), "--compile with --sync_bn is not supported (SyncBatchNorm breaks "
                                              "torch.compile's graph): drop one of them"),
        (math.isfinite(args.dist_timeout) and 0 < args.dist_timeout <= MAX_DIST_TIMEOUT,
         f"--dist_timeout must be a positive, finite number of minutes, at most {MAX_DIST_TIMEOUT} (a week)"),
        (args.bs % world == 0, f"--bs {args.bs} is the global batch and must split evenly over the {world} "
                               f"processes: use a multiple of {world}"),
        (args.eval_every >= 0 and args.eval_patches >= 1, "--eval_every must be ≥ 0 and --eval_patches ≥ 1"),
    ])


def default_run_dir(args: argparse.Namespace) -> Path:
    """The official run folder name: logs/<dir>/patchsim<w>_numpatch<P>_bs<B>_lr<lr>_<msg>; with
    another --loss than emp, its name comes first instead of patchsim<w>."""
    objective = f"patchsim{args.patch_sim:g}" if args.loss == "emp" else args.loss
    name = f"{objective}_numpatch{args.num_patches}_bs{args.bs}_lr{args.lr:g}_{args.msg}"
    return Path("logs") / args.dir / name


def trained_with(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's args with every run-defining flag it predates at its BEFORE_THE_FLAG value (a
    function of those args where the value depended on them)."""
    before = {k: value(saved) if callable(value) else value for k, value in BEFORE_THE_FLAG.items()
              if k not in saved and (not callable(value) or "data" in saved)}
    return {**before, **saved}


def changed_flags(saved: dict[str, Any], args: argparse.Namespace) -> str:
    """The run-defining flags whose value in a checkpoint's args differs from args, as
    "--bs 16 (now 32), …"; empty when a resume may continue that run. A flag that the checkpoint's
    args lack counts as its BEFORE_THE_FLAG value, if it has one; one of FROM_THE_RUN left unset
    (None) takes the checkpoint's value, so it cannot differ."""
    saved = trained_with(saved)
    changed = [k for k in RUN_DEFINING if k in saved and saved[k] != getattr(args, k)
               and not (k in FROM_THE_RUN and getattr(args, k) is None)]
    return ", ".join(f"--{k} {saved[k]} (now {getattr(args, k)})" for k in changed)


def resume_state(args: argparse.Namespace, run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None for a new run; refuse to overwrite an existing run.
    A run that torchrun restarts after a failure (--max_restarts) resumes from its last.pt as if
    --resume had been given. --resume continues last.pt and nothing else: where it is missing or is
    not a training checkpoint, the refusal names the newest epoch checkpoint and the `cp` that makes
    it last.pt (the user's choice, made visible, rather than a silent fallback)."""
    last = run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restart and not args.resume and last.exists():
        distributed.print_main(f"torchrun restart {restart}: resuming from {last}")
        args.resume = True
    restore = ckpt.restore_last(run_dir)  # "" when no epoch checkpoint is there
    if not args.resume:
        if last.exists():
            raise UserError(f"{run_dir} already holds checkpoints: pass --resume to continue that run, "
                            f"or choose another --output_dir or --msg")
        if ckpt.existing_checkpoints(run_dir):
            fix = f"{restore}, then pass --resume" if restore else "choose another --output_dir or --msg"
            raise UserError(f"{run_dir} holds checkpoints but no {ckpt.LAST}: {fix}")
        return None
    if not last.exists() and restore:
        raise UserError(f"--resume: {run_dir} has no {ckpt.CHECKPOINT_DIR}/{ckpt.LAST}: {restore}, then run this "
                        f"command again")
    then = f"move it out of {ckpt.CHECKPOINT_DIR}/ and {restore}" if restore else "start a run in another --output_dir"
    try:
        state = ckpt.load_checkpoint(last)
    except UserError as err:
        raise UserError(f"--resume: {err}{'; ' + then if last.exists() else ''}") from err
    kind = ckpt.kind_of(state)
    if kind:
        use = f"; evaluate it with evaluate.py --model_path {last}" if "state dict" in kind else ""
        raise UserError(f"--resume: {last} is {kind}, not a training checkpoint of main.py: it cannot be "
                        f"resumed{use}; {then}")
    diff = changed_flags(state.get("args", {}), args)
    if diff:
        raise UserError(f"--resume: {last} was trained with {diff}: resume with the same flags")
    return state


def prepare_run_dir(run_dir: Path, args: argparse.Namespace) -> None:
    """Clear temporary files a killed save left in the run folder (checked writable at the start), and
    record this run."""
    for leftover in (run_dir / ckpt.CHECKPOINT_DIR).glob(".*.tmp*"):
        leftover.unlink()
    ckpt.write_run_record(run_dir, vars(args))


def build_training(args: argparse.Namespace, device: torch.device, steps_per_epoch: int, run_dir: Path) -> Training:
    """The encoder on the device (wrapped for DDP and compiled as asked), the loss, the optimiser
    and the cosine schedule to 0 over every step of the run, sized from the real data set (the
    official code assumes 50,000 images); the parts come from build.py."""
    encoder = build_encoder(args, device)
    wrapped = distributed.wrap(encoder, device, args.sync_bn)  # DDP over the ranks; the encoder itself in one process
    wrapped = compile_model(wrapped, device) if args.compile else wrapped  # shares the encoder's parameters
    optimizer = build_optimizer(encoder, args)
    record = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return Training(encoder=encoder, wrapped=wrapped, criterion=build_criterion(args), optimizer=optimizer,
                    scheduler=build_scheduler(optimizer, steps_per_epoch * args.epoch), num_patches=args.num_patches,
                    amp_dtype=AMP_DTYPES[args.precision], steps_per_epoch=steps_per_epoch, run_dir=run_dir,
                    args=record)


def refuse_impossible_slices(args: argparse.Namespace) -> None:
    """A --patch_chunks K that would cut a slice of one patch from this rank's step (P·B/W patches),
    refused before the data is read (plumbing/memory_plan.check_slices)."""
    if args.patch_chunks != "auto":
        check_slices(int(args.patch_chunks), args.num_patches * (args.bs // distributed.launch_from_env().world_size))


def plan_chunks(args: argparse.Namespace, training: Training, device: torch.device) -> tuple[MemoryPlan, int]:
    """(the memory plan of this rank's step, the slices of --patch_chunks), measured before the first step."""
    plan = step_memory_plan(args, training.encoder, device, args.bs // distributed.get_world_size())
    return plan, choose_chunks(args.patch_chunks, plan)


CPU_SIZED = ("--arch resnet10-cifar --hidden_dim 1024 --z_dim 256 --num_patches 8 --bs 100 --epoch 1 "
             "(README: a CPU-sized run)")


def cpu_note(args: argparse.Namespace, device: torch.device) -> str | None:
    """A line for a run of a GPU-sized network on the CPU, which the defaults are (the paper's
    resnet18 at P·B = 10,000 patches a step: a minute or more a step there), naming a CPU-sized
    run; None on a GPU or for the small resnet10-cifar."""
    if device.type != "cpu" or args.arch == "resnet10-cifar":
        return None
    return (f"note: {args.arch} with {args.num_patches * args.bs:,} patches a step is sized for a GPU; on the CPU "
            f"a step can take minutes. A CPU-sized run: {CPU_SIZED}")


def log_knn(monitor: KNNMonitor, training: Training, writer: Any, epoch: int) -> None:
    """The cheap training-time kNN (rank 0): top-1 on the test split, to TensorBoard and the console."""
    knn_top1 = monitor(training.encoder)
    writer.add_scalar("eval/knn_top1", knn_top1, training.step)
    print(f"epoch {epoch}: kNN top-1 {knn_top1:.2f} ({monitor.num_patches} patches per image)")


@distributed.entry_point
def main(args: argparse.Namespace) -> None:
    validate_args(args)
    refuse_impossible_slices(args)
    run_dir = args.output_dir or default_run_dir(args)
    refuse_restart_after_stop(run_dir)
    device = distributed.setup(resolve_device(args.device), args.dist_backend, args.dist_timeout, args.sync_bn)
    state = distributed.fail_together(lambda: resume_state(args, run_dir))  # every rank reads last.pt
    saved = None if state is None else state.get("args", {})
    spec = distributed.fail_together(  # before the run folder is made; a resumed run's own patches where not given
        lambda: resolve_patches(args, saved, "as the run being resumed was trained"))
    distributed.on_main(check_writable, run_dir, "--output_dir", "the run folder")  # before any data is read
    seed_everything(args.seed, args.deterministic)

    patches = distributed.main_first(lambda: training_patches(args, device))  # rank 0 downloads, the others wait
    monitor = build_monitor(args, device) if args.eval_every and distributed.is_main() else None
    training = build_training(args, device, patches.steps_per_epoch, run_dir)
    plan, chunks = distributed.fail_together(lambda: plan_chunks(args, training, device))  # before anything is written
    training.chunks = distributed.max_over_ranks(chunks)  # the same slices on every rank
    if state is not None:
        training.load_state_dict(state, run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST)

    with Preemption() as preemption:  # from here on, SIGTERM and Ctrl-C stop at a step boundary with last.pt saved
        distributed.on_main(prepare_run_dir, run_dir, args)
        distributed.print_main(banner(args))
        distributed.print_main(f"patches: {spec.describe()}")
        distributed.print_main(f"memory: {plan.describe(training.chunks, args.patch_chunks)}")
        if (note := cpu_note(args, device)) is not None:
            distributed.print_main(note)
        distributed.print_main(f"run folder: {run_dir}  ({patches.steps_per_epoch} steps per epoch, "
                               f"{patches.steps_per_epoch * args.epoch} in all, on {device} × "
                               f"{distributed.get_world_size()} processes)")
        if state is not None:
            distributed.print_main(f"resuming from step {training.step} of epoch {training.epoch} "
                                   f"({ckpt.LAST} of {run_dir})")
        writer = TensorBoard(run_dir, "training goes on without them; checkpoints are still saved") \
            if distributed.is_main() else None
        if writer is not None and state is None:  # what the encoder sees: the first step's patches
            patches.set_epoch(0)
            log_patch_grids(writer, next(iter(patches)), args.num_patches, args.augment)
        log = StepLog(writer, args.log_every, NonFiniteGuard(args.skip_nonfinite, device), args.num_patches * args.bs)

        def after_epoch(epoch: int) -> None:  # every rank calls on_main, rank 0 alone runs the kNN
            if args.eval_every and (epoch + 1) % args.eval_every == 0:
                distributed.on_main(partial(log_knn, monitor, training, writer, epoch))

        schedule = Schedule(args.epoch, args.train_epochs, args.max_steps, args.save_every_steps)
        stop = fit(training, patches, log, schedule, preemption, after_epoch)
    if writer is not None:
        writer.close()
    if stop is not None:  # exit 128 + its number: neither a shell nor torchrun takes the run for a finished one
        distributed.record_stop(stop)
        raise Stopped(stop)
    distributed.print_main(f"done: {run_dir}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
