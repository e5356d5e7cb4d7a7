"""Benchmark of the evaluation: patch generation and bag-of-features extraction with both augment
paths (batched on the device, pil in DataLoader workers), and the probes' time.

Usage:
    python scripts/benchmark_eval.py                      # synthetic images, CPU-sized, a few minutes
    python scripts/benchmark_eval.py --data imagefolder --data_dir data/cifar10-slice --images 64  # make_cifar_slice.py
    python scripts/benchmark_eval.py --device cuda --images 5000 --eval_bs 500 --workers 16 \
        --knn_train 50000 --knn_test 10000 --linear_train 50000 --linear_epochs 5

Only the test split is read: with --data imagefolder an ImageFolder tree's
<data_dir>/test/<class>/<image> (or val/); with --data cifar10 torchvision's CIFAR-10 folder
(<data_dir>/cifar-10-batches-py/), never downloaded.

The first --images images of the test split get --test_patches patches each, exactly as
evaluate.py makes them. Timed with the device synchronised, in --repeats rounds (each figure is
the best round, so that other jobs on a shared machine weigh less): each path's patch generation
alone (batched: from building its source, which decodes an image folder into memory, to the last
batch on the device; pil: the loader's batches, worker start-up included), the encoder's forward
alone on the batched patches already made, then each path's whole extraction (patches + forward,
as evaluate.py runs it). The probes run on random features of the
official shape; the linear probe's time is also scaled to 100 epochs. Last, one step of the linear
probe as probes.linear_probe takes it (fused, no autograd) against the reference formulation
(:func:`reference_linear_probe`: autograd + torch.optim.SGD), on one CPU thread at a size where
dispatch is the cost, as on a GPU at the official size: their ratio.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `python scripts/…`

if __name__ == "__main__":  # first: Ctrl-C while the modules below load ends in one line, status 130
    from plumbing.errors import interrupt_in_one_line
    interrupt_in_one_line()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import Dataset, Subset  # noqa: E402

from dataset import AUGMENTS, DATASETS, EvaluationPatches, PatchRecipe, build_dataset, patch_spec  # noqa: E402
from dataset.catalog import DATA_DEFAULTS  # noqa: E402
from features import TEST_PATCHES, bag_of_features  # noqa: E402
from model import ARCHS, ENCODER_DEFAULTS, Encoder  # noqa: E402
from plumbing.cli import ArgumentParser, require, run_cli  # noqa: E402
from plumbing.device import resolve_device  # noqa: E402
from plumbing.speed import AMP_DTYPES  # noqa: E402
from probes import KNN_K, KNN_T, OFFICIAL_LINEAR, Labelled, LinearSettings, knn_accuracy, linear_probe, topk_correct  # noqa: E402
from scripts.benchmark import timed_call  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("EMP-SSL evaluation benchmark", description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("Data")
    data.add_argument("--data", default="synthetic", choices=DATASETS, help="data set (default %(default)s)")
    data.add_argument("--data_dir", type=Path, default=DATA_DEFAULTS["data_dir"], help="its folder (default %(default)s)")
    data.add_argument("--images", type=int, default=16, help="test images to extract (default %(default)s, CPU-sized)")
    feats = parser.add_argument_group("Extraction")
    feats.add_argument("--arch", default=ENCODER_DEFAULTS["arch"], choices=ARCHS, help="backbone (%(default)s)")
    feats.add_argument("--hidden_dim", type=int, default=ENCODER_DEFAULTS["hidden_dim"], help="pre_feature width (%(default)s)")
    feats.add_argument("--test_patches", type=int, default=TEST_PATCHES,
                       help="patches per image (official %(default)s)")
    feats.add_argument("--eval_bs", type=int, default=8, help="images per batch (default %(default)s)")
    feats.add_argument("--forward_bs", type=int, default=512, help="patches per forward pass (default %(default)s)")
    feats.add_argument("--workers", type=int, default=2, help="DataLoader workers of the pil path (%(default)s)")
    feats.add_argument("--precision", default="fp32", choices=tuple(AMP_DTYPES),
                       help="forward precision (default %(default)s, as evaluate.py)")
    feats.add_argument("--repeats", type=int, default=2,
                       help="rounds of the extraction timings; each figure is the best round (default %(default)s)")
    probes = parser.add_argument_group("Probes")
    probes.add_argument("--dim", type=int, default=4096, help="feature width of the probes (%(default)s)")
    probes.add_argument("--classes", type=int, default=10, help="classes (%(default)s)")
    probes.add_argument("--knn_train", type=int, default=10000,
                        help="kNN memory size (default %(default)s; official 50,000)")
    probes.add_argument("--knn_test", type=int, default=2000, help="kNN queries (default %(default)s; official 10,000)")
    probes.add_argument("--linear_train", type=int, default=10000, help="linear-probe training features (%(default)s)")
    probes.add_argument("--linear_epochs", type=int, default=2, help="epochs timed (default %(default)s; official 100)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    return parser


def extraction(args: argparse.Namespace, images: Dataset, device: torch.device) -> dict[str, float]:
    """Images per second of each path's patch generation and extraction and of the forward alone
    (each the best of --repeats rounds, the paths alternating within a round), and the batched/pil
    ratios of the best times."""
    torch.manual_seed(0)
    model = Encoder(args.arch, args.hidden_dim, 128).to(device).eval()
    dtype = AMP_DTYPES[args.precision]
    spec = patch_spec(args.data, args.data_dir)  # as evaluate.py: an image folder's from its images

    def batches(augment: str, dataset: Dataset = images, patches: int = args.test_patches):
        recipe = PatchRecipe.of(spec, augment, patches, seed=0)
        return EvaluationPatches(dataset, recipe, args.eval_bs, args.workers, device)

    def bag(source) -> tuple[torch.Tensor, torch.Tensor]:
        return bag_of_features(model, source, device, args.forward_bs, dtype)

    def generate(augment: str) -> list:
        return list(batches(augment))

    def extract(augment: str) -> tuple[torch.Tensor, torch.Tensor]:
        return bag(batches(augment))

    for augment in AUGMENTS:  # warm-up
        bag(batches(augment, Subset(images, range(1)), 2))
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        seconds = {}
        for augment in AUGMENTS:
            seconds[f"patches {augment}"], made = timed_call(partial(generate, augment), device)
            if augment == "batched":
                seconds["forward"], _ = timed_call(partial(bag, made), device)
            del made
        for augment in AUGMENTS:
            seconds[f"extraction {augment}"], _ = timed_call(partial(extract, augment), device)
        best = {name: min(s, best.get(name, s)) for name, s in seconds.items()}
    n = len(images)
    return {
        f"patches, pil ({args.workers} workers), images/s": n / best["patches pil"],
        f"patches, batched (on {device.type}), images/s": n / best["patches batched"],
        "patch generation, batched / pil": best["patches pil"] / best["patches batched"],
        f"forward only ({args.arch}, {args.precision}), images/s": n / best["forward"],
        "extraction (patches + forward), pil, images/s": n / best["extraction pil"],
        "extraction (patches + forward), batched, images/s": n / best["extraction batched"],
        "extraction, batched / pil": best["extraction pil"] / best["extraction batched"],
    }


def reference_linear_probe(train: Labelled, test: Labelled, num_classes: int, settings: LinearSettings,
                           seed: int = 0) -> dict:
    """probes.linear_probe as it was written before its steps were fused, and as the official code
    runs it: nn.Linear, F.cross_entropy, autograd, torch.optim.SGD and CosineAnnealingLR, one
    optimizer step per batch; the same seeds, batches and return values."""
    (train_x, train_y), (test_x, test_y) = train, test
    device = train_x.device
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        classifier = nn.Linear(train_x.shape[1], num_classes).to(device)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.wd)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs)
    steps = max(1, len(train_y) // settings.bs)
    history, history_loss = [], []
    for _ in range(settings.epochs):
        order = torch.randperm(len(train_y), generator=generator, device=device)
        loss_sum = torch.zeros((), device=device)
        for idx in order[: steps * settings.bs].view(steps, -1):  # (steps, bs)
            loss = F.cross_entropy(classifier(train_x[idx]), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        scheduler.step()
        history_loss.append(loss_sum.item() / steps)
        with torch.no_grad():
            logits = classifier(test_x)  # (M, C)
        result = {f"top{t}": 100.0 * int(topk_correct(logits, test_y, t).sum()) / len(test_y) for t in (1, 5)}
        history.append(result["top1"])
    return {**result, "best_top1_over_test_epochs": max(history), "history_top1": history,
            "history_loss": history_loss}


def linear_dispatch() -> dict[str, float]:
    """Microseconds per step of the reference linear probe and of probes.linear_probe on one CPU
    thread at a size where dispatch, not arithmetic, is the cost (2,000 features of 64 dims, 10
    classes, batch 100, 10 epochs; best of 3), as it is on a GPU at the official size; the ratio
    is what the fused steps gain. One thread: on a busy machine, idle threads spinning between
    tiny ops would time the load, not the probe."""
    g = torch.Generator().manual_seed(0)
    train = torch.randn(2000, 64, generator=g), torch.randint(10, (2000,), generator=g)  # (N, D), (N,)
    test = torch.randn(500, 64, generator=g), torch.randint(10, (500,), generator=g)  # (M, D), (M,)
    settings = replace(OFFICIAL_LINEAR, epochs=10)
    steps = settings.epochs * len(train[1]) // settings.bs
    cpu, threads = torch.device("cpu"), torch.get_num_threads()
    seconds = {}
    torch.set_num_threads(1)
    try:
        for name, probe in (("reference", reference_linear_probe), ("fused", linear_probe)):
            probe(train, test, 10, replace(settings, epochs=1))  # warm-up
            seconds[name] = min(timed_call(partial(probe, train, test, 10, settings), cpu)[0] for _ in range(3))
    finally:
        torch.set_num_threads(threads)
    size = "on 1 CPU thread, 2000 x 64 features"
    return {
        f"linear probe step {size}, reference (autograd + torch.optim.SGD), us": 1e6 * seconds["reference"] / steps,
        f"linear probe step {size}, fused, us": 1e6 * seconds["fused"] / steps,
        "linear probe step, reference / fused": seconds["reference"] / seconds["fused"],
    }


def probes(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Seconds of the kNN and of the linear probe on random features."""
    g = torch.Generator().manual_seed(0)
    sizes = (args.knn_train, args.knn_test)
    train_x, test_x = (torch.randn(n, args.dim, generator=g).to(device) for n in sizes)  # (N, dim), (M, dim)
    train_y, test_y = (torch.randint(args.classes, (n,), generator=g).to(device) for n in sizes)  # (N,), (M,)
    knn_s, _ = timed_call(lambda: knn_accuracy((train_x, train_y), (test_x, test_y), args.classes, KNN_K, KNN_T),
                          device)
    lin_x, lin_y = train_x[:args.linear_train], train_y[:args.linear_train]
    linear_s, _ = timed_call(lambda: linear_probe((lin_x, lin_y), (test_x, test_y), args.classes,
                                                        replace(OFFICIAL_LINEAR, epochs=args.linear_epochs)), device)
    return {
        f"kNN {args.knn_train} x {args.knn_test} x {args.dim}, s": knn_s,
        f"linear probe on {len(lin_y)} features, s per epoch": linear_s / args.linear_epochs,
        "linear probe, 100 epochs (scaled), s": 100 * linear_s / args.linear_epochs,
    }


def main(args: argparse.Namespace) -> None:
    require([(min(args.images, args.test_patches, args.eval_bs, args.forward_bs, args.repeats) >= 1,
              "--images, --test_patches, --eval_bs, --forward_bs and --repeats must be at least 1"),
             (args.workers >= 0, "--workers must be 0 or more")])
    device = resolve_device(args.device)
    images = build_dataset(args.data, args.data_dir, "test", download=False)
    images = Subset(images, range(min(args.images, len(images))))
    rows = {**extraction(args, images, device), **probes(args, device), **linear_dispatch()}
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads); {args.data}: {len(images)} images x {args.test_patches} patches")
    print("| measure | value |\n|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.3g} |")
    print(json.dumps({**vars(args), "images": len(images), "device": str(device), **rows}, default=str))


if __name__ == "__main__":
    run_cli(main, get_args_parser())
