"""Evaluate an EMP-SSL encoder with the official protocol: bag-of-features, weighted kNN and a
linear probe on the frozen 4096-d pre_feature.

Usage:
    python evaluate.py --ckpt logs/EMP-SSL-Training/<run>/save_models/29.pt          # the paper's protocol
    python evaluate.py --ckpt <run>/save_models/last.pt --random_init                 # its baseline
    python evaluate.py --model_path official.pt --arch resnet18-cifar --data cifar10  # an official checkpoint
    python evaluate.py --ckpt <run>/save_models/last.pt --precision bf16 --channels_last  # the fast mode on a GPU

Writes `<checkpoint stem>.eval.json` beside the checkpoint (every number and the configuration)
and caches the features there (or in --cache_dir), keyed by checkpoint, data and patches; `--recompute`
ignores them. Every output is checked writable before a feature is computed; a result file that
still cannot be written at the end is printed on stdout before the error.

The patches are made as the checkpoint's training made them (its --augment, --crop_scale, --patch_kind and
--patch_size; for an official checkpoint `batched`, the batched augmentation on the evaluation device, the
official 0.25 of the area and the evaluated data's own patch kind and size; for a checkpoint older than a
flag, that flag's value then, the patches what its --data gave) unless those flags say otherwise (`pil`:
the official per-patch PIL pipeline in DataLoader workers); either way an image's patches
depend only on (--seed, split, its index in the full split), from a random stream separate from
training's. The default is float32 throughout, for parity with the official
numbers; `--precision bf16` runs the forward under bf16 autocast and lets the probes' float32
products use TF32, and `--channels_last` lays the encoder and the patches out channels-last.
"""
from __future__ import annotations

if __name__ == "__main__":  # first: Ctrl-C while the modules below load ends in one line, status 130
    from plumbing.errors import interrupt_in_one_line
    interrupt_in_one_line()

import argparse
import json
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.functional as TF
from torch.utils.data import Dataset

from dataset import AUGMENTS, DATASETS, EvaluationPatches, PatchRecipe, class_names, load_split
from dataset.catalog import (
    DATA_DEFAULTS,
    MIN_PATCH_SIZE,
    PATCH_KINDS,
    DataSpec,
    patch_size_flag,
    resolve_patches,
)
from dataset.patch_sources import DEFAULT_AUGMENT, DEFAULT_CROP_SCALE, crop_scale_flag
from dataset.seeding import eval_seed
from features import (
    FORWARD_BS,
    TEST_PATCHES,
    bag_of_features,
    cache_path,
    cached_features,
    code_fingerprint,
    file_digest,
    full_view_loader,
)
from loss import cuda_matmul_precision
from model import ARCHS, ENCODER_DEFAULTS, Encoder
from plumbing import checkpoint as ckpt
from plumbing.cli import ArgumentParser, banner, default_workers, require, run_cli
from plumbing.device import resolve_device
from plumbing.files import TensorBoard, check_file_writable, check_writable, unwritable, write_or_print
from plumbing.pictures import log_embedding
from plumbing.preemption import leave_signals_to_parent
from plumbing.speed import AMP_DTYPES, memory_format, prepare_model
from probes import KNN_K, KNN_T, OFFICIAL_LINEAR, LinearSettings, knn_accuracy, linear_probe

# Flags that default to the checkpoint's training args, else to these official defaults (None: from the data,
# resolve_patches).
FROM_CHECKPOINT = {**DATA_DEFAULTS, **ENCODER_DEFAULTS, "augment": DEFAULT_AUGMENT, "crop_scale": DEFAULT_CROP_SCALE,
                   "patch_kind": None, "patch_size": None}
# Flags that change how an evaluation runs or where it writes, not the numbers it computes; every other
# flag is its protocol, recorded in the result file (scripts/reproduce.py reuses a result of the same one).
RUNNING_FLAGS = ("device", "workers", "download", "eval_bs", "forward_bs", "recompute", "cache_dir", "output",
                 "embedding")


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("EMP-SSL evaluation", description="kNN and linear probes on bag-of-features; "
                            "defaults are the official ones.")
    model = parser.add_argument_group("Model")
    model.add_argument("--ckpt", "--model_path", type=Path, default=None,
                       help="checkpoint to evaluate: ours (save_models/<epoch>.pt) or an official state dict")
    model.add_argument("--arch", default=None, choices=ARCHS, help="backbone (default: the checkpoint's, "
                       f"else the official {ENCODER_DEFAULTS['arch']})")
    model.add_argument("--hidden_dim", type=int, default=None,
                       help=f"pre_feature width (default: the checkpoint's, else {ENCODER_DEFAULTS['hidden_dim']})")
    model.add_argument("--z_dim", type=int, default=None,
                       help=f"projection width (default: the checkpoint's, else {ENCODER_DEFAULTS['z_dim']})")
    model.add_argument("--random_init", action="store_true",
                       help="evaluate an untrained encoder of the same architecture, seeded by --seed: the baseline")

    data = parser.add_argument_group("Data")
    data.add_argument("--data", default=None, choices=DATASETS,
                      help=f"data set (default: the checkpoint's, else {DATA_DEFAULTS['data']})")
    data.add_argument("--data_dir", type=Path, default=None,
                      help=f"its folder (default: the checkpoint's, else {DATA_DEFAULTS['data_dir']})")
    data.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                      help="download CIFAR into --data_dir when it is missing (default: %(default)s)")
    data.add_argument("--train_subset", type=int, default=None, help="use a fixed class-balanced subset of this "
                      "many training images (quick checks; default: all)")
    data.add_argument("--test_subset", type=int, default=None, help="the same for the test split (default: all)")
    data.add_argument("--workers", type=int, default=default_workers(),
                      help="DataLoader worker processes for the patches (default: %(default)s: 8, or the machine's "
                           "cores if fewer); with --augment batched, threads that decode an image folder into memory")

    feats = parser.add_argument_group("Features")
    feats.add_argument("--augment", default=None, choices=tuple(AUGMENTS),
                       help="how the patches are made (default: as the checkpoint was trained, else "
                            f"{DEFAULT_AUGMENT}): " + "; ".join(f"{name}: {what}" for name, what in AUGMENTS.items()))
    feats.add_argument("--crop_scale", type=crop_scale_flag, default=None, metavar="S",
                       help="the share of the image's area each patch covers, in (0, 1] (default: the checkpoint's "
                            f"training --crop_scale, else the official {DEFAULT_CROP_SCALE})")
    feats.add_argument("--patch_kind", default=None, choices=tuple(PATCH_KINDS),
                       help="cifar (square crops, bilinear) or imagenet (aspect ratio 3/4..4/3, bicubic) (default: as "
                            "the checkpoint was trained; an official checkpoint or --random_init without one: from "
                            "the data, as main.py)")
    feats.add_argument("--patch_size", type=patch_size_flag, default=None, metavar="S",
                       help=f"patches of S×S pixels, at least {MIN_PATCH_SIZE} (default: as --patch_kind)")
    feats.add_argument("--view", default="patches", choices=("patches", "full"),
                       help="patches: the official bag-of-features over --test_patches augmented patches (default); "
                            "full: every whole image once, without augmentation (the usual single-view protocol)")
    feats.add_argument("--test_patches", type=int, default=TEST_PATCHES,
                       help="patches per image averaged into its feature (official default %(default)s)")
    feats.add_argument("--eval_bs", type=int, default=50, help="images per batch (official %(default)s)")
    feats.add_argument("--forward_bs", type=int, default=FORWARD_BS,
                       help="patches per forward pass (default %(default)s); lower it if memory runs out")
    feats.add_argument("--seed", type=int, default=0,
                       help="seed of the patches (and of --random_init weights) (%(default)s)")
    feats.add_argument("--precision", default="fp32", choices=tuple(AMP_DTYPES),
                       help="forward precision (default %(default)s, as the official evaluation); bf16 runs the "
                            "forward under autocast and lets the probes' float32 products use TF32 (faster on recent "
                            "GPUs); features are kept in float32 either way")
    feats.add_argument("--recompute", action="store_true", help="ignore cached features and compute them again")
    feats.add_argument("--cache_dir", type=Path, default=None,
                       help="folder of the feature cache (default: the checkpoint's folder; where that cannot be "
                            "written, the features are kept in memory only, with a warning)")

    probes = parser.add_argument_group("Probes")
    probes.add_argument("--knn", action=argparse.BooleanOptionalAction, default=True,
                        help="weighted kNN (default: %(default)s)")
    probes.add_argument("--knn_k", type=int, default=KNN_K, help="neighbours (official %(default)s)")
    probes.add_argument("--knn_t", type=float, default=KNN_T,
                        help="temperature of the exp(cos/T) votes (official %(default)s)")
    probes.add_argument("--linear", action=argparse.BooleanOptionalAction, default=True,
                        help="linear probe (default: %(default)s)")
    probes.add_argument("--linear_epochs", type=int, default=OFFICIAL_LINEAR.epochs,
                        help="epochs, cosine schedule over them (official %(default)s)")
    probes.add_argument("--linear_lr", type=float, default=OFFICIAL_LINEAR.lr,
                        help="SGD learning rate (official %(default)s)")
    probes.add_argument("--linear_wd", type=float, default=OFFICIAL_LINEAR.wd,
                        help="weight decay (official %(default)s)")
    probes.add_argument("--linear_momentum", type=float, default=OFFICIAL_LINEAR.momentum,
                        help="SGD momentum (official %(default)s)")
    probes.add_argument("--linear_bs", type=int, default=OFFICIAL_LINEAR.bs, help="batch size (official %(default)s)")

    running = parser.add_argument_group("Running")
    running.add_argument("--output", type=Path, default=None,
                         help="result JSON (default: <checkpoint stem>[.random_init].eval.json beside the checkpoint)")
    running.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    running.add_argument("--channels_last", action="store_true",
                         help="channels-last memory layout of the encoder and the patches (faster convs on GPU); "
                              "it can change the features' float rounding, so cached features are keyed by it "
                              "(default: %(default)s)")
    running.add_argument("--embedding", type=int, default=0,
                         help="also write the features of the first N test images, with labels and thumbnails, for "
                              "TensorBoard's projector (PCA, t-SNE, UMAP) into <result stem>.tensorboard/ "
                              "(default %(default)s)")
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Refuse impossible flag values before anything is loaded or written."""
    require([
        (args.ckpt is not None or args.random_init, "pass --ckpt (or --model_path), or --random_init"),
        (args.ckpt is not None or args.output is not None, "--random_init without --ckpt needs --output"),
        (args.test_patches >= 1, "--test_patches must be at least 1"),
        (min(args.eval_bs, args.forward_bs, args.linear_bs) >= 1,
         "--eval_bs, --forward_bs and --linear_bs must be at least 1"),
        (args.knn_k >= 1 and args.knn_t > 0, "--knn_k must be at least 1 and --knn_t positive"),
        (args.linear_epochs >= 1 and args.linear_lr > 0, "--linear_epochs must be ≥ 1 and --linear_lr positive"),
        (args.workers >= 0, "--workers must be 0 or more"),
        (args.embedding >= 0, "--embedding must be 0 or more"),
    ])


def build_encoder(args: argparse.Namespace) -> tuple[Encoder, dict[str, Any]]:
    """The encoder to evaluate, in eval mode on the CPU, and the checkpoint record. Fills the
    unset flags of FROM_CHECKPOINT from the checkpoint's training args, else the official defaults."""
    state, record = ckpt.read_checkpoint(args.ckpt) if args.ckpt is not None else ({}, {"args": {}})
    for name, default in FROM_CHECKPOINT.items():
        if getattr(args, name) is None:
            setattr(args, name, record["args"].get(name, default))
    args.data_dir = Path(args.data_dir)
    torch.manual_seed(args.seed)  # the --random_init weights
    model = Encoder(args.arch, args.hidden_dim, args.z_dim)
    if not args.random_init:
        ckpt.load_state_strict(model, state, args.ckpt)
    return model.eval(), record


def protocol(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that define what an evaluation computes, as given (before the checkpoint fills the
    unset ones) and as JSON holds them: every flag but RUNNING_FLAGS."""
    return json.loads(json.dumps({k: v for k, v in sorted(vars(args).items()) if k not in RUNNING_FLAGS}, default=str))


def weights_identity(args: argparse.Namespace) -> str:
    """What the evaluated weights are: the checkpoint's SHA-256, or the random init's torch version."""
    return f"random_init (torch {torch.__version__})" if args.random_init else file_digest(args.ckpt)


def output_paths(args: argparse.Namespace) -> tuple[Path, Path, str]:
    """(result JSON, cache folder, cache file prefix)."""
    if args.ckpt is None:
        return args.output, args.cache_dir or args.output.parent, "random_init"
    stem = args.ckpt.stem + (".random_init" if args.random_init else "")
    return args.output or args.ckpt.with_name(f"{stem}.eval.json"), args.cache_dir or args.ckpt.parent, args.ckpt.name


def tensorboard_folder(output: Path) -> Path:
    """<result stem>.tensorboard/ beside the result JSON."""
    return output.with_name(f"{output.stem}.tensorboard")


def check_outputs(args: argparse.Namespace, output: Path, cache_folder: Path) -> bool:
    """Refuse a result JSON or TensorBoard folder that cannot be written, before any feature is
    computed; return whether the feature cache can be written (a folder of --cache_dir that cannot
    is refused too; the checkpoint's own folder costs a warning, and the features stay in memory)."""
    check_file_writable(output, "--output")
    if args.linear or args.embedding:
        check_writable(tensorboard_folder(output), "--output", "the TensorBoard folder")
    if args.cache_dir is not None:
        check_writable(cache_folder, "--cache_dir", "the feature cache")
        return True
    cause = unwritable(cache_folder)
    if cause is not None:
        print(f"warning: cannot write the feature cache in {cache_folder} ({cause}); the features are kept in "
              f"memory only (--cache_dir puts the cache elsewhere)", file=sys.stderr)
    return cause is None


@dataclass(frozen=True)
class FeatureCache:
    """Where the features of one evaluated encoder are cached: folder, file prefix, the identity of
    its weights (a checkpoint's SHA-256, or the random init's torch version), and whether new
    features are written there (else only read)."""

    folder: Path
    prefix: str
    weights: str
    store: bool = True


def split_features(args: argparse.Namespace, model: Encoder, device: torch.device, dataset: Dataset,
                   split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(bag-of-features (N, hidden_dim) float32, labels (N,)) of a split's images, on the CPU, with
    the patches of --augment (images are loaded onto the device only here, not on a cache hit)."""
    if args.view == "full":
        batches = full_view_loader(dataset, DataSpec(args.patch_kind, args.patch_size), args.eval_bs, args.workers,
                                   pin_memory=device.type == "cuda")
    else:
        recipe = PatchRecipe.of(DataSpec(args.patch_kind, args.patch_size), args.augment, args.test_patches,
                                eval_seed(args.seed, split), args.crop_scale)
        batches = EvaluationPatches(dataset, recipe, args.eval_bs, args.workers, device, leave_signals_to_parent)
    dtype = AMP_DTYPES[args.precision]
    layout = memory_format(args.channels_last)
    return bag_of_features(model, batches, device, args.forward_bs, dtype, f"{split} features", layout)


def extract(args: argparse.Namespace, model: Encoder, device: torch.device, splits: dict[str, Dataset],
            cache: FeatureCache, seconds: dict[str, float]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (bag-of-features (N, hidden_dim) float32, labels (N,))} on the device, from the cache
    when it holds them, else computed and cached."""
    base_key = {"weights": cache.weights, "arch": args.arch, "hidden_dim": args.hidden_dim, "z_dim": args.z_dim,
                "data": args.data, "data_dir": None if args.data == "synthetic" else str(args.data_dir.resolve()),
                "test_patches": args.test_patches, "seed": args.seed, "precision": args.precision,
                "channels_last": args.channels_last, "augment": args.augment, "crop_scale": args.crop_scale,
                "patch_kind": args.patch_kind, "patch_size": args.patch_size, "view": args.view,
                "code": code_fingerprint()}
    tensors = {}
    for split, dataset in splits.items():
        key = {**base_key, "split": split, "subset": len(dataset)}
        compute = partial(split_features, args, model, device, dataset, split)
        tick = time.perf_counter()
        (feats, labels), hit = cached_features(cache_path(cache.folder, cache.prefix, key), key, compute,
                                               args.recompute, cache.store)
        seconds[f"features_{split}"] = time.perf_counter() - tick
        print(f"{split}: {len(labels)} images, {'cached' if hit else 'computed'} features {tuple(feats.shape)}")
        tensors[split] = (feats.to(device), labels.to(device))
    return tensors


def run_probes(args: argparse.Namespace, tensors: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int,
               seconds: dict[str, float]) -> tuple[dict[str, Any], list[str]]:
    """({"knn": …, "linear": …} for the probes switched on, their one-line summaries)."""
    results, summary = {}, []
    if args.knn:
        tick = time.perf_counter()
        knn = knn_accuracy(tensors["train"], tensors["test"], num_classes, args.knn_k, args.knn_t)
        seconds["knn"] = time.perf_counter() - tick
        results["knn"] = {"k": args.knn_k, "t": args.knn_t, **knn}
        summary.append(f"kNN top-1 {knn['top1']:.2f} top-5 {knn['top5']:.2f}")
    if args.linear:
        tick = time.perf_counter()
        settings = LinearSettings(args.linear_epochs, args.linear_lr, args.linear_momentum, args.linear_wd,
                                  args.linear_bs)
        linear = linear_probe(tensors["train"], tensors["test"], num_classes, settings, args.seed, progress=True)
        seconds["linear"] = time.perf_counter() - tick
        best = linear["best_top1_over_test_epochs"]
        results["linear"] = {"epochs": args.linear_epochs, "lr": args.linear_lr, "momentum": args.linear_momentum,
                             "wd": args.linear_wd, "bs": args.linear_bs, "schedule": "cosine over epochs",
                             "top1": linear["top1"], "top5": linear["top5"],
                             "best_top1_over_test_epochs (official reporting)": best,
                             "test_top1_per_epoch": linear["history_top1"],
                             "train_loss_per_epoch": linear["history_loss"]}
        summary.append(f"linear top-1 {linear['top1']:.2f} top-5 {linear['top5']:.2f} (final epoch; "
                       f"best over test epochs, official reporting: {best:.2f})")
    return results, summary


def write_tensorboard(args: argparse.Namespace, output: Path, probes: dict[str, Any],
                      tensors: dict[str, tuple[torch.Tensor, torch.Tensor]], test_set: Dataset) -> None:
    """<result stem>.tensorboard/: the linear probe's train loss and test top-1 per epoch as scalars,
    and with --embedding N the first N test features for the projector, thumbnails included. A
    fault there is one warning: the curve is in the result JSON too."""
    if "linear" not in probes and not args.embedding:
        return
    with TensorBoard(tensorboard_folder(output), "the probe's curve is in the result JSON") as writer:
        linear = probes.get("linear", {})
        for epoch, (loss, top1) in enumerate(zip(linear.get("train_loss_per_epoch", []),
                                                 linear.get("test_top1_per_epoch", [])), start=1):
            writer.add_scalar("linear_probe/train_loss", loss, epoch)
            writer.add_scalar("linear_probe/test_top1", top1, epoch)
        if args.embedding:
            features, labels = (t[:args.embedding] for t in tensors["test"])
            thumbnails = torch.stack([TF.resize(TF.pil_to_tensor(test_set[i][0]), [32, 32], antialias=True)
                                      for i in range(len(labels))]).float() / 255  # (N, 3, 32, 32)
            log_embedding(writer, features, labels, class_names(test_set), thumbnails, f"{args.view} features")


def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    validate_args(args)
    flags = protocol(args)
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True  # evaluation shapes are fixed: cuDNN times its kernels once per shape
    both_given = args.patch_kind is not None and args.patch_size is not None
    model, record = build_encoder(args)
    patches = resolve_patches(args, None if both_given else record["args"], "as the checkpoint was trained")
    output, cache_folder, prefix = output_paths(args)
    cache = FeatureCache(cache_folder, prefix, weights_identity(args), check_outputs(args, output, cache_folder))
    model.to(device)
    prepare_model(model, device, args.channels_last)
    splits = {split: load_split(args.data, args.data_dir, split, subset, args.download)
              for split, subset in (("train", args.train_subset), ("test", args.test_subset))}
    num_classes = len(class_names(splits["train"]))
    print(banner(args))
    print(f"patches: {patches.describe()}")

    seconds: dict[str, float] = {}
    tensors = extract(args, model, device, splits, cache, seconds)
    fast = cuda_matmul_precision("tf32") if args.precision == "bf16" else nullcontext()
    with fast:  # the probes' float32 products (kNN similarities, the linear probe) in TF32 under bf16
        probes, summary = run_probes(args, tensors, num_classes, seconds)
    result = {
        "checkpoint": None if args.ckpt is None else str(args.ckpt), "random_init": args.random_init,
        "checkpoint_epoch": record.get("epoch"), "checkpoint_step": record.get("step"), "weights": cache.weights,
        "arch": args.arch, "hidden_dim": args.hidden_dim, "z_dim": args.z_dim, "data": args.data,
        "data_dir": str(args.data_dir), "train_images": len(tensors["train"][1]),
        "test_images": len(tensors["test"][1]), "num_classes": num_classes,
        "train_subset": args.train_subset, "test_subset": args.test_subset, "test_patches": args.test_patches,
        "augment": args.augment, "crop_scale": args.crop_scale, "patch_kind": args.patch_kind,
        "patch_size": args.patch_size, "seed": args.seed, "precision": args.precision,
        "channels_last": args.channels_last, "git_commit": ckpt.git_commit(),
        "protocol": flags, **probes, "seconds": seconds,
    }
    write_tensorboard(args, output, probes, tensors, splits["test"])
    seconds["total"] = time.perf_counter() - started  # result["seconds"] is this dict
    name = f"random-init {args.arch}" if args.random_init else str(args.ckpt)
    view = f"{args.test_patches} patches" if args.view == "patches" else "one full view"
    print(f"{name} on {args.data} ({view}): {' | '.join(summary) or 'features only'}")
    write_or_print(output, json.dumps(result, indent=2), "--output")
    print(f"results: {output}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
