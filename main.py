"""EMP-SSL training: many augmented patches per image, cosine-to-mean invariance and the
Total Coding Rate of each patch group (Tong, Chen, Ma, LeCun, arXiv 2304.03977).

Usage:
    python main.py --num_patches 20 --epoch 30          # CIFAR-10, the paper's setting
    python main.py --data synthetic --arch resnet10-cifar --hidden_dim 512 --z_dim 128 \
        --num_patches 8 --bs 50 --epoch 1 --device cpu   # a first run on the built-in data
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from torch.utils.tensorboard import SummaryWriter

import checkpoint as ckpt
from dataset import DATASETS, MultiPatch, augmentation_kind, build_dataset, class_balanced_subset, patch_transform
from dataset.sampler import ResumableSampler
from dataset.seeded import SeededPatches
from engine import train_one_epoch
from errors import ArgumentParser, UserError, run_cli
from features import KNNMonitor
from lars import LARS
from loss import EMPSSLLoss
from model import ARCHS, Encoder

# Flags that define what a run computes: a resumed run must keep them.
RUN_DEFINING = ("data", "train_subset", "num_patches", "arch", "hidden_dim", "z_dim", "patch_sim", "tcr",
                "eps", "bs", "lr", "wd", "lars_eta", "epoch", "seed")


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("EMP-SSL training", description="Train an EMP-SSL encoder; defaults are the official ones.")
    data = parser.add_argument_group("Data")
    data.add_argument("--data", default="cifar10", choices=DATASETS, help="data set (official default: cifar10)")
    data.add_argument("--data_dir", type=Path, default=Path("data"),
                      help="folder of the data set; CIFAR is downloaded here when missing; folder data sets "
                           "need <data_dir>/train and <data_dir>/val or test (default: data)")
    data.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                      help="download CIFAR into --data_dir when it is missing (default: on)")
    data.add_argument("--num_patches", type=int, default=100,
                      help="augmented patches per image, P (official default 100; the paper's runs use 20)")
    data.add_argument("--train_subset", type=int, default=None,
                      help="train on a fixed, class-balanced subset of this many images (quick experiments)")
    data.add_argument("--workers", type=int, default=8, help="DataLoader worker processes (default: 8)")

    model = parser.add_argument_group("Model")
    model.add_argument("--arch", default="resnet18-cifar", choices=ARCHS,
                       help="backbone (official default: resnet18-cifar; resnet10-cifar is the small CPU net)")
    model.add_argument("--hidden_dim", type=int, default=4096,
                       help="width of pre_feature (the evaluated representation) and of the projector (4096)")
    model.add_argument("--z_dim", type=int, default=1024, help="dimension d of the projected embedding (1024)")

    loss = parser.add_argument_group("Loss")
    loss.add_argument("--patch_sim", type=float, default=200.0, help="weight of the invariance term (200)")
    loss.add_argument("--tcr", type=float, default=1.0, help="weight of the total coding rate term (1)")
    loss.add_argument("--eps", type=float, default=0.2, help="distortion ε of the coding rate, > 0 (0.2)")

    optim = parser.add_argument_group("Optim")
    optim.add_argument("--bs", type=int, default=100, help="images per step, B; each step sees P·B patches (100)")
    optim.add_argument("--lr", type=float, default=0.3, help="base learning rate of LARS-wrapped SGD (0.3), "
                                                              "cosine-annealed to 0 over every step of the run")
    optim.add_argument("--wd", type=float, default=1e-4, help="weight decay of ≥2-d weights (1e-4)")
    optim.add_argument("--lars_eta", type=float, default=0.005, help="LARS trust coefficient η (0.005)")
    optim.add_argument("--epoch", type=int, default=30, help="epochs; sizes the cosine schedule (official 30)")
    optim.add_argument("--max_steps", type=int, default=None,
                       help="stop after this many steps in all (smoke runs); the schedule keeps its full length")

    logging = parser.add_argument_group("Logging")
    logging.add_argument("--dir", default="EMP-SSL-Training", help="folder under logs/ (official default)")
    logging.add_argument("--msg", default="NONE", help="suffix of the run folder name (official default NONE)")
    logging.add_argument("--output_dir", type=Path, default=None,
                         help="run folder (default: logs/<dir>/patchsim<..>_numpatch<..>_bs<..>_lr<..>_<msg>)")
    logging.add_argument("--resume", action="store_true",
                         help="continue the run in the run folder from its save_models/last.pt")

    monitor = parser.add_argument_group("Eval")
    monitor.add_argument("--eval_every", type=int, default=0,
                         help="every N epochs, log the weighted kNN top-1 of the test split against the training "
                              "split as eval/knn_top1 (default 0: never; evaluate.py gives the full protocol)")
    monitor.add_argument("--eval_patches", type=int, default=4,
                         help="patches per image in that kNN's bag-of-features (default 4; evaluate.py uses 128)")
    monitor.add_argument("--eval_subset", type=int, default=None,
                         help="that kNN uses a fixed class-balanced subset of this many images of each split "
                              "(default: all)")

    running = parser.add_argument_group("Running")
    running.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    running.add_argument("--seed", type=int, default=0, help="seed of weights, data order and augmentation (0)")
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Refuse impossible flag values before anything is built or written."""
    checks = [
        (args.num_patches >= 2, "--num_patches must be at least 2 (the invariance term compares patches)"),
        (args.bs >= 2, "--bs must be at least 2 (the coding rate and BatchNorm need several images)"),
        (args.eps > 0, "--eps must be positive (it divides the coding rate's scale d/(B·eps))"),
        (args.epoch >= 1, "--epoch must be at least 1"),
        (args.lr > 0, "--lr must be positive"),
        (args.max_steps is None or args.max_steps >= 1, "--max_steps must be at least 1"),
        (args.workers >= 0, "--workers must be 0 or more"),
        (args.eval_every >= 0 and args.eval_patches >= 1, "--eval_every must be ≥ 0 and --eval_patches ≥ 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def default_run_dir(args: argparse.Namespace) -> Path:
    """The official run folder name: logs/<dir>/patchsim<w>_numpatch<P>_bs<B>_lr<lr>_<msg>."""
    name = f"patchsim{args.patch_sim:g}_numpatch{args.num_patches}_bs{args.bs}_lr{args.lr:g}_{args.msg}"
    return Path("logs") / args.dir / name


def resolve_device(name: str) -> torch.device:
    """auto → cuda when available, else cpu; an unavailable CUDA device is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for CUDA but this machine has no GPU: use --device cpu")
    return device


def build_loader(args: argparse.Namespace, device: torch.device) -> DataLoader:
    """Multi-patch training loader: each batch is ([P tensors (B, C, H, W)], labels (B,)), in the
    seeded order of a :class:`ResumableSampler` (call loader.sampler.set_epoch before each epoch),
    with patches that depend on (seed, epoch, image) alone."""
    kind, size = augmentation_kind(args.data)
    dataset = build_dataset(args.data, args.data_dir, "train", download=args.download)
    if args.train_subset is not None:
        dataset = Subset(dataset, class_balanced_subset(dataset.targets, args.train_subset, seed=0))
    dataset = SeededPatches(dataset, MultiPatch(patch_transform(kind, size), args.num_patches), args.seed)
    if len(dataset) < args.bs:
        raise UserError(f"the training set has {len(dataset)} images, fewer than --bs {args.bs}: lower --bs")
    sampler = ResumableSampler(len(dataset), args.bs, seed=args.seed)
    return DataLoader(dataset, batch_size=sampler.local_batch, sampler=sampler, drop_last=True,
                      num_workers=args.workers, pin_memory=device.type == "cuda",
                      persistent_workers=args.workers > 0, generator=torch.Generator().manual_seed(args.seed))


def resume_state(args: argparse.Namespace, run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None for a new run; refuse to overwrite an existing run."""
    last = run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST
    if not args.resume:
        if ckpt.existing_checkpoints(run_dir):
            raise UserError(f"{run_dir} already holds checkpoints: pass --resume to continue that run, "
                            f"or choose another --output_dir or --msg")
        return None
    state = ckpt.load_checkpoint(last)
    saved = state.get("args", {})
    changed = [k for k in RUN_DEFINING if k in saved and saved[k] != getattr(args, k)]
    if changed:
        diff = ", ".join(f"--{k} {saved[k]} (now {getattr(args, k)})" for k in changed)
        raise UserError(f"--resume: {last} was trained with {diff}: resume with the same flags")
    return state


def main(args: argparse.Namespace) -> None:
    validate_args(args)
    device = resolve_device(args.device)
    run_dir = args.output_dir or default_run_dir(args)
    state = resume_state(args, run_dir)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    loader = build_loader(args, device)
    monitor = KNNMonitor(args.data, args.data_dir, args.download, args.eval_patches, args.eval_subset, args.seed,
                         args.bs, args.workers, device) if args.eval_every else None
    steps_per_epoch = loader.sampler.steps_per_epoch
    model = Encoder(args.arch, args.hidden_dim, args.z_dim).to(device)
    criterion = EMPSSLLoss(args.patch_sim, args.tcr, args.eps)
    optimizer = LARS(model.parameters(), lr=args.lr, weight_decay=args.wd, eta=args.lars_eta)
    total_steps = steps_per_epoch * args.epoch  # sized from the real data set, not a fixed 50,000
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=0)
    step = 0
    if state is not None:
        ckpt.load_state_strict(model, state["model"], run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        step = state["step"]

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.write_run_record(run_dir, vars(args))
    except OSError as err:
        raise UserError(f"cannot write the run folder {run_dir} ({err.strerror}): choose another --output_dir") from err
    print(json.dumps({"git_commit": ckpt.git_commit(), **dict(sorted(vars(args).items()))}, default=str))
    print(f"run folder: {run_dir}  ({steps_per_epoch} steps per epoch, {total_steps} in all, on {device})")

    writer = SummaryWriter(log_dir=str(run_dir))
    args_record = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    for epoch in range(step // steps_per_epoch, args.epoch):
        stop_step = min((epoch + 1) * steps_per_epoch, args.max_steps or total_steps)
        if step >= stop_step:
            break
        loader.sampler.set_epoch(epoch, start_step=step - epoch * steps_per_epoch)
        step = train_one_epoch(model, criterion, optimizer, scheduler, loader, device, epoch, step, writer,
                               stop_step)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step, "args": args_record,
                 "rng": ckpt.rng_state()}
        if step == (epoch + 1) * steps_per_epoch:
            ckpt.save_checkpoint(state, run_dir / ckpt.CHECKPOINT_DIR / f"{epoch}.pt")
        ckpt.save_checkpoint(state, run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST)
        print(f"epoch {epoch}: step {step}, checkpoint {run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST}")
        if monitor is not None and step == (epoch + 1) * steps_per_epoch and (epoch + 1) % args.eval_every == 0:
            knn_top1 = monitor(model)
            writer.add_scalar("eval/knn_top1", knn_top1, step)
            print(f"epoch {epoch}: kNN top-1 {knn_top1:.2f} ({args.eval_patches} patches per image)")
        if args.max_steps is not None and step >= args.max_steps:
            break
    writer.close()
    print(f"done: {run_dir}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
