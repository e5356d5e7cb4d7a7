"""Speed of the fast path against the official formulation, side by side, as ratios.

Measures (1) patch generation per second, the official per-patch PIL pipeline (``--workers``
DataLoader processes, 0 = in this process) against the batched augmentation on ``--device``;
(2) the coding rate, forward + backward, ours (B×B Gram, one batched Cholesky) against the
official per-group d×d ``logdet`` loop, at B = 100, d = 1024, P = 20 and 200; (3) whole training
steps per second with each ``--augment`` path, and the model alone on one ready batch, which gives
the model's share of a step (on a GPU: how busy the data path lets the GPU be); (4) one step of
200 patches per image run whole and in slices (``--patch_chunks``), each in a fresh process: the
memory it adds at its peak and its seconds; (5) ImageNet-kind patches (224 px, bicubic, from
folders of JPEG files it writes itself: 64×64 images, Tiny ImageNet's shape, and about 400×350,
ImageNet's), the crops cut by DataLoader workers against whole images sent to the device and
cropped there: patches per second and the bytes the loader moves to the device per step. Writes
a JSON file and prints a Markdown table; ``--only`` runs one of these lines.

What runs is what main.py trains: the patches, the encoder, the objective, the optimiser and the
schedule come from build.py (through main.build_training), from an args namespace of main.py's
own parser, whose defaults are the official method, with this script's sizes overriding --arch,
--hidden_dim, --z_dim, --bs and --num_patches; every step is engine.train_step. A change to the
method in those places is benchmarked here as it is trained.

(1) and (3) time one path at a time over consecutive steps after a warm-up, synchronising the
device only around the timed run, as training runs; a path's loader and workers exist only for
its turn, so no path is timed on batches prefetched while another one ran.

Usage:
    python scripts/benchmark.py --threads 1            # CPU sizes, one core
    python scripts/benchmark.py --tiny --device cpu --steps 2 --warmup 1   # toy sizes, seconds
    python scripts/benchmark.py --full --workers 8 --precision bf16 --channels_last   # paper size on a GPU
    python scripts/benchmark.py --data imagefolder --data_dir data/cifar10-slice   # scripts/make_cifar_slice.py's
    python scripts/benchmark.py --only imagenet --device cpu --out imagenet.json   # line (5) alone, ~2 min on 2 cores

--data imagefolder reads an ImageFolder tree, <data_dir>/train/<class>/<image> (and val/ or test/
beside it); --data cifar10 reads torchvision's CIFAR-10 folder (<data_dir>/cifar-10-batches-py/)
and never downloads it. On a shared machine absolute numbers move with the load; the ratios,
measured in one run, are what to compare.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # first: Ctrl-C while the modules below load ends in one line, status 130
    from plumbing.errors import interrupt_in_one_line
    interrupt_in_one_line()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from build import patch_shape, training_patches  # noqa: E402
from dataset import AUGMENTS, PatchRecipe, TrainingPatches, load_split  # noqa: E402
from dataset.catalog import DATA_DEFAULTS  # noqa: E402
from dataset.draws import crop_window_sized, sample_crops  # noqa: E402
from dataset.images import load_image  # noqa: E402
from dataset.pil_pipeline import CROP_RATIO  # noqa: E402
from dataset.pixels import CACHE_ENV  # noqa: E402
from dataset.resampling import resized_crops  # noqa: E402
from dataset.sampler import ResumableSampler  # noqa: E402
from engine import NonFiniteGuard, Training, seed_everything  # noqa: E402
from loss import total_coding_rate  # noqa: E402
from main import build_training  # noqa: E402
from main import get_args_parser as training_flags  # noqa: E402
from model import ENCODER_DEFAULTS  # noqa: E402
from plumbing.cli import ArgumentParser, default_workers, run_cli  # noqa: E402
from plumbing.device import resolve_device  # noqa: E402
from plumbing.files import check_file_writable, write_file, write_or_print  # noqa: E402
from plumbing.preemption import leave_signals_to_parent  # noqa: E402
from plumbing.speed import AMP_DTYPES, memory_format  # noqa: E402
from scripts.reproduce import flags  # noqa: E402

T = TypeVar("T")
IMAGENET_CPU_STEPS = 16  # (5)'s timed steps at the CPU size: the whole line in at most about 2 minutes on 2 cores
CIFAR10_TRAIN = 50_000  # images in one CIFAR-10 epoch, for seconds per epoch
CLEAR_REFS = Path("/proc/self/clear_refs")  # Linux: writing 5 resets the resident set's peak
LINES = {"patchgen": "patchgen", "tcr": "tcr", "train": "train", "chunks": "chunks",  # --only: line → JSON key
         "imagenet": "imagenet_patches"}
IMAGENET_FOLDERS = {  # (5): folder → the --data name that gives the ImageNet kind, the (height, width) of its images
    "64": ("tinyimagenet", ((64, 64),)),  # Tiny ImageNet's shape
    "400": ("imagenet100", ((350, 400), (400, 350))),  # about ImageNet's, landscape and portrait in turn
}
IMAGENET_TARGETS = {"speed": 3.0, "bytes": 20.0}  # device crops: ≥ 3× the patches per second, ≥ 20× fewer bytes
FIELD_CELL, FIELD_GRAIN, JPEG_QUALITY = 32, 20, 90  # generated images: colours 32 px apart, ±20 levels of grain
CROP_FILTER = {"cifar": "bilinear", "imagenet": "bicubic"}  # each kind's RandomResizedCrop interpolation (pil_pipeline)


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("EMP-SSL benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="paper size: main.py's encoder ({arch}, hidden {hidden_dim}, z {z_dim}), batch 100, "
                             "20 patches, reported as seconds per CIFAR-10 epoch (meant for a GPU)"
                             .format(**ENCODER_DEFAULTS))
    parser.add_argument("--tiny", action="store_true",
                        help="a few seconds on the CPU at toy sizes (the chain of scripts/gpu_check.sh --tiny)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the pil path (%(default)s)")
    parser.add_argument("--data", default="synthetic", choices=("synthetic", "cifar10", "imagefolder"),
                        help="training images (synthetic: the built-in 32×32 set, CIFAR-sized)")
    parser.add_argument("--data_dir", type=Path, default=DATA_DEFAULTS["data_dir"],
                        help="folder of --data cifar10 (cifar-10-batches-py/ inside, never downloaded) or "
                             "imagefolder (train/<class>/<image>) (%(default)s)")
    parser.add_argument("--steps", type=int, default=50, help="timed consecutive training steps per path (%(default)s)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed steps before them (worker start-up, cuDNN autotuning, compilation) (%(default)s)")
    parser.add_argument("--precision", default="fp32", choices=tuple(AMP_DTYPES),
                        help="main.py's --precision in (3) and (4) (%(default)s)")
    parser.add_argument("--channels_last", action="store_true", help="main.py's --channels_last in (3) and (4)")
    parser.add_argument("--compile", action="store_true", help="main.py's --compile in (3) and (4)")
    parser.add_argument("--imagenet_workers", type=int, default=default_workers(),
                        help="DataLoader workers of (5), the ImageNet-kind line (8, or the machine's cores if fewer: "
                             "%(default)s)")
    parser.add_argument("--only", choices=tuple(LINES),
                        help="run this line alone: (1) patchgen, (2) tcr, (3) train, (4) chunks, (5) imagenet")
    parser.add_argument("--out", type=Path, default=Path("benchmark.json"), help="JSON output (%(default)s)")
    return parser


def sizes(args: argparse.Namespace) -> dict:
    """The configuration of every measurement: CPU sizes by default, the paper's with --full,
    toy sizes with --tiny. "flags" are main.py flags (without dashes) over its defaults."""
    if args.tiny:
        toy = {"arch": "resnet10-cifar", "hidden_dim": 64, "z_dim": 32}
        return {"patchgen": {"flags": {"bs": 8, "num_patches": 4}, "repeats": 2, "warmup": 1},
                "tcr": {"batch": 8, "dim": 32, "num_patches": [4], "loop_groups": 4},
                "train": {"flags": {**toy, "bs": 8, "num_patches": 4}, "steps": args.steps, "warmup": args.warmup},
                "chunks": {"flags": {**toy, "bs": 4, "num_patches": 20}, "chunks": [1, 5]},
                "imagenet": imagenet_sizes(args, batch=2, num_patches=2, steps=1, crop_repeats=1)}
    model = dict(ENCODER_DEFAULTS) if args.full else {"arch": "resnet10-cifar", "hidden_dim": 1024, "z_dim": 256}
    return {"patchgen": {"flags": {"bs": 100, "num_patches": 20}, "repeats": 20 if args.full else 5, "warmup": 2},
            "tcr": {"batch": 100, "dim": 1024, "num_patches": [20, 200], "loop_groups": 20},
            "train": {"flags": {**model, "bs": 100 if args.full else 50, "num_patches": 20 if args.full else 8},
                      "steps": args.steps, "warmup": args.warmup},
            "chunks": {"flags": {**ENCODER_DEFAULTS, "bs": 100 if args.full else 8, "num_patches": 200},
                       "chunks": [1, 10]},
            "imagenet": imagenet_sizes(args, batch=64 if args.full else 8, num_patches=20,
                                       steps=10 if args.full else IMAGENET_CPU_STEPS, crop_repeats=3)}


def imagenet_sizes(args: argparse.Namespace, batch: int, num_patches: int, steps: int, crop_repeats: int) -> dict:
    """(5)'s configuration: B images × P patches a step, --imagenet_workers DataLoader processes,
    `steps` timed steps after one untimed step per worker (at least one: the first starts the
    workers and each worker's first batch is made meanwhile, so the timed steps find the pipeline
    full), one epoch of exactly those steps (the folders hold (warm-up + steps)·B images, in 4
    classes), crop_repeats timings of the crops alone; and the torch CPU threads of this process
    while the paths are timed: --threads, else the cores the workers leave (at least 1) — on 2
    cores, torch's default of 2 threads beside 2 busy workers made the worker crops' steps erratic
    (at nice 19 on a shared machine: 18 and 467 patches per second in one run, 97 s of CPU time
    where 1 thread took 14 s and gave 366 and 345)."""
    workers = args.imagenet_workers
    warmup = max(1, workers)
    return {"bs": batch, "num_patches": num_patches, "workers": workers, "steps": steps, "warmup": warmup,
            "images": (warmup + steps) * batch, "classes": 4, "crop_repeats": crop_repeats,
            "threads": args.threads or max(1, (os.cpu_count() or 1) - workers)}


def run_args(args: argparse.Namespace, size: dict[str, object], augment: str) -> argparse.Namespace:
    """main.py's args for one measurement: its defaults (the official objective, optimiser and
    schedule), this benchmark's data and speed flags, the measurement's size (main.py flags
    without dashes, e.g. {"bs": 50}) and the --augment path. Nothing is downloaded."""
    speed = [*(["--channels_last"] if args.channels_last else []), *(["--compile"] if args.compile else [])]
    argv = ["--data", args.data, "--data_dir", str(args.data_dir), "--no-download", "--augment", augment,
            "--workers", str(args.workers), "--precision", args.precision, *speed, *flags(size)]
    return training_flags().parse_args(argv)


def timed(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median wall seconds of each fn() over repeats calls, the fns taking turns (so that a change
    of the machine's load hits them alike). For self-contained computations only (no prefetching
    sources): see :func:`consecutive`."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed_call(fn, device)[0])
    return {name: statistics.median(t) for name, t in times.items()}


def timed_call(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """(wall seconds, fn()) of one call, the device synchronised on both sides."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def consecutive(fn: Callable[[], object], warmup: int, steps: int, device: torch.device) -> float:
    """Wall seconds per call of fn over `steps` consecutive calls after `warmup` untimed ones, the
    device synchronised only before and after the timed run (as training runs: the host queues
    work ahead of the device)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def endless(patches: TrainingPatches) -> Iterator[torch.Tensor]:
    """The training batches of build.training_patches, epoch after epoch; closing the iterator
    stops the loader's workers."""
    for epoch in itertools.count():
        patches.set_epoch(epoch)
        yield from patches


def bench_patchgen(args: argparse.Namespace, cfg: dict, device: torch.device) -> dict:
    """(1) Patches per second of each augmentation path, one path at a time over consecutive
    batches; each path's source (and its workers) is made for its turn and closed after it."""
    out = {}
    for augment in AUGMENTS:
        run = run_args(args, cfg["flags"], augment)
        it = endless(training_patches(run, device))
        out[augment] = run.num_patches * run.bs / consecutive(lambda: next(it), cfg["warmup"], cfg["repeats"], device)
        it.close()  # its workers stop before the next path is timed
    out["ratio"] = out["batched"] / out["pil"]
    return out


def rate_by_logdet_loop(z: torch.Tensor, eps: float) -> torch.Tensor:
    """The official formulation: for each group, ½ logdet(I_d + d/(B·ε) Z_pᵀ Z_p) with a d×d matrix."""
    _, b, d = z.shape
    eye = torch.eye(d, device=z.device)
    return torch.stack([torch.logdet(eye + d / (b * eps) * zp.T @ zp) / 2 for zp in z])  # (P,)


def bench_tcr(cfg: dict, device: torch.device) -> dict:
    """(2) Coding rate forward + backward, ours against the per-group loop, at main.py's --eps; for
    many groups the loop is timed on cfg['loop_groups'] groups and scaled up (marked extrapolated)."""
    out, eps = {}, training_flags().parse_args([]).eps
    for num_patches in cfg["num_patches"]:
        z = torch.nn.functional.normalize(torch.randn(num_patches, cfg["batch"], cfg["dim"], device=device), dim=-1)
        z.requires_grad_(True)
        groups = min(num_patches, cfg["loop_groups"])
        seconds = timed({"ours": lambda: total_coding_rate(z, eps).mean().backward(),
                         "loop": lambda: rate_by_logdet_loop(z[:groups], eps).mean().backward()}, 3, device)
        ours, loop = seconds["ours"], seconds["loop"] * num_patches / groups
        with torch.no_grad():
            gap = (total_coding_rate(z[:groups], eps) - rate_by_logdet_loop(z[:groups], eps)).abs().max().item()
        out[f"P={num_patches}"] = {"ours_ms": 1e3 * ours, "loop_ms": 1e3 * loop, "ratio": loop / ours,
                                   "loop_extrapolated_from_groups": groups if groups < num_patches else None,
                                   "max_abs_rate_difference": gap}
    return out


def fresh_training(run: argparse.Namespace, device: torch.device, steps_per_epoch: int) -> Training:
    """main.py's run of these args, seeded as main.py seeds it (weights, cuDNN autotuning):
    main.build_training's encoder (wrapped and compiled as asked), objective, optimiser and
    schedule. Never saved (its run folder is os.devnull)."""
    seed_everything(run.seed, run.deterministic)
    return build_training(run, device, steps_per_epoch, Path(os.devnull))


def training_step(training: Training, source: Iterator[torch.Tensor],
                  guard: NonFiniteGuard) -> Callable[[], dict[str, torch.Tensor]]:
    """main.py's step between two reads of its values, as a closure: Training.take_step (the one
    engine's loop takes) on the next batch of source; no host read. Returns the step's values, on
    the device."""
    return lambda: training.take_step(next(source), guard)


def bench_train(args: argparse.Namespace, cfg: dict, device: torch.device) -> dict:
    """(3) Training steps per second of each augment path, one path at a time over consecutive
    steps after a warm-up, plus the model alone (every step on one batch made beforehand): the
    model's share of a step is model-alone time / whole-step time (1: the data path is hidden)."""
    out: dict = {}
    for augment in (*AUGMENTS, "model alone"):
        run = run_args(args, cfg["flags"], "batched" if augment == "model alone" else augment)
        patches = training_patches(run, device)
        it = endless(patches)
        source = itertools.repeat(next(it)) if augment == "model alone" else it
        step = training_step(fresh_training(run, device, patches.steps_per_epoch), source,
                             NonFiniteGuard(run.skip_nonfinite, device))
        seconds = consecutive(step, cfg["warmup"], cfg["steps"], device)
        it.close()
        out[augment] = {"steps_per_s": 1 / seconds, "patches_per_s": run.num_patches * run.bs / seconds,
                        "s_per_cifar10_epoch": seconds * (CIFAR10_TRAIN // run.bs)}
    model_alone = out.pop("model alone")
    for augment in AUGMENTS:
        out[augment]["model_share"] = out[augment]["steps_per_s"] / model_alone["steps_per_s"]
    out["model_alone"] = model_alone
    out["ratio"] = out["batched"]["steps_per_s"] / out["pil"]["steps_per_s"]
    return out


def reset_peak(device: torch.device) -> None:
    """Start a new peak of :func:`peak_bytes` from the memory in use now."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif CLEAR_REFS.exists():
        CLEAR_REFS.write_text("5")  # Linux: the resident set's high-water mark becomes its current size


def peak_bytes(device: torch.device) -> int:
    """The memory in use at its peak since :func:`reset_peak`: CUDA memory allocated on a GPU; on
    the CPU the resident set's high-water mark (VmHWM; where Linux's /proc is missing, the
    process's peak resident set, which a spawned process starts at its parent's size)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    if CLEAR_REFS.exists():
        line = next(row for row in Path("/proc/self/status").read_text().splitlines() if row.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024  # "VmHWM:  123 kB"
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit


def chunk_step(run: argparse.Namespace, device_name: str, threads: int | None) -> dict[str, float]:
    """(4) in a process of its own: main.py's step of run.bs images × run.num_patches patches of
    random pixels in run.patch_chunks slices, on a fresh model; the memory the first step adds at
    its peak (:func:`peak_bytes`; it includes the optimiser's and the guard's first allocations)
    and the seconds of a second step."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    training = fresh_training(run, device, steps_per_epoch=2)
    training.chunks = int(run.patch_chunks)
    x = torch.randn(run.num_patches * run.bs, *patch_shape(run), device=device)  # (P·B, 3, S, S)
    step = training_step(training, itertools.repeat(x.contiguous(memory_format=memory_format(run.channels_last))),
                         NonFiniteGuard(run.skip_nonfinite, device))
    reset_peak(device)
    before = peak_bytes(device)
    timed_call(step, device)
    return {"peak_bytes": peak_bytes(device) - before, "seconds": timed_call(step, device)[0]}


def bench_chunks(args: argparse.Namespace, cfg: dict, device: torch.device) -> dict:
    """(4) One step of P·B patches run whole (K = 1) and in K slices (--patch_chunks): the memory it
    adds at its peak and the seconds of a second step (:func:`chunk_step`), each K in a fresh
    process (spawned) so that no allocator cache or peak carries over."""
    out: dict = {}
    for k in cfg["chunks"]:
        run = run_args(args, {**cfg["flags"], "patch_chunks": k}, "batched")
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as fresh:
            out[f"K={k}"] = fresh.submit(chunk_step, run, str(device), args.threads).result()
    first, last = (out[f"K={k}"] for k in (cfg["chunks"][0], cfg["chunks"][-1]))
    # without Linux's /proc a toy step may not raise the process's peak resident set: then no ratio
    out["memory_ratio"] = last["peak_bytes"] / first["peak_bytes"] if first["peak_bytes"] > 0 else None
    out["time_ratio"] = last["seconds"] / first["seconds"]
    return out


def colour_field(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A smooth random colour field with a fine grain, height×width RGB: random colours on a grid of
    cells FIELD_CELL pixels apart, interpolated bicubically, plus uniform noise of ±FIELD_GRAIN
    levels, clipped to 0 … 255 — content with both low and high frequencies, so that its JPEG
    file decodes at about a photograph's cost (the mean file size is recorded)."""
    cells = rng.integers(0, 256, (max(2, height // FIELD_CELL), max(2, width // FIELD_CELL), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-FIELD_GRAIN, FIELD_GRAIN + 1, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def write_colour_folder(root: Path, shapes: tuple[tuple[int, int], ...], images: int, classes: int) -> list[Path]:
    """An ImageFolder tree root/train/<class>/<i>.jpg of `images` JPEG files (quality JPEG_QUALITY):
    image i is a :func:`colour_field` of shapes[i mod len(shapes)] (height, width), in class
    i mod classes, all drawn from one generator seeded by 0 (the same files on every machine).
    Returns their paths, in i's order."""
    rng, paths = np.random.default_rng(0), []
    for i in range(images):
        image = colour_field(rng, *shapes[i % len(shapes)])
        path = root / "train" / f"class{i % classes}" / f"{i:05d}.jpg"
        write_file(path, lambda tmp, image=image: image.save(tmp, "JPEG", quality=JPEG_QUALITY))
        paths.append(path)
    return paths


IMAGENET_PATHS = {  # (5): path → (TrainingPatches' device_crops, the images forced through the DataLoader)
    "worker_crops": (False, False),  # the workers cut P crops per image with PIL
    "device_crops": (True, True),  # the workers decode and ship whole images; the crops are made on the device
    "device_crops_held": (True, False),  # as training runs it: equally sized images that fit stay on the device
}


class ThroughLoader(Dataset):
    """A data set's items as they are, in a wrapper that dataset/pixels.py does not hold in memory
    (``in_memory_pixels`` gives None for anything but an ImageFolder or an array-backed set), so
    that TrainingPatches sends its images through the DataLoader even where it would keep them
    on the device (equally sized images that fit: the 64×64 folder)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> object:
        return self.dataset[index]


def imagenet_patches(run: argparse.Namespace, device: torch.device, path: str) -> TrainingPatches:
    """build.training_patches of run, in one process, by one of :data:`IMAGENET_PATHS`."""
    device_crops, through_loader = IMAGENET_PATHS[path]
    dataset = load_split(run.data, run.data_dir, "train")
    sampler = ResumableSampler(len(dataset), run.bs, seed=run.seed)
    recipe = PatchRecipe.of(run.data, run.augment, run.num_patches, run.seed, run.crop_scale)
    return TrainingPatches(ThroughLoader(dataset) if through_loader else dataset, recipe, sampler, run.workers,
                           device, memory_format(run.channels_last), leave_signals_to_parent, device_crops=device_crops)


def time_patches(run: argparse.Namespace, device: torch.device, path: str, cfg: dict) -> dict:
    """One path of (5) alone (:data:`IMAGENET_PATHS`; its loader and workers made for its turn,
    stopped after it):
    patches per second over cfg["steps"] consecutive steps after cfg["warmup"] untimed ones, each
    step the (P·B, 3, 224, 224) float32 patches ready on the device, the photometric half included;
    and bytes_per_step, the bytes of what the loader gave to be moved to the device in the last
    step (TrainingPatches.bytes_per_step; 0 for images held on the device)."""
    patches = imagenet_patches(run, device, path)
    it = endless(patches)
    seconds = consecutive(lambda: next(it), cfg["warmup"], cfg["steps"], device)
    it.close()
    return {"patches_per_s": run.num_patches * run.bs / seconds, "bytes_per_step": int(patches.bytes_per_step)}


@contextlib.contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """torch's CPU threads set to `threads` inside the block, as they were after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def pixel_cache(folder: Path) -> Iterator[None]:
    """dataset/pixels.py's decoded-image cache in `folder` inside the block (``$EMP_SSL_CACHE``),
    as it was after it."""
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = before


def crop_stage(paths: list[Path], recipe: PatchRecipe, repeats: int, device: torch.device) -> dict:
    """The crops alone of (5), without decoding, loader or photometric half, on one CPU thread (on a
    CPU: per core), for P patches of each of the decoded images at `paths`: worker crops are the
    workers' per-patch transform (RandomResizedCrop, flip, PILToTensor; recipe.worker_transform)
    in this process; device crops are the box draws (draws.sample_crops on each image's size) and
    resampling.resized_crops of the images as one padded uint8 batch on the device, Pillow-exact
    (as the device-crop path cuts them) and in float32 (resized_crops' default). Patches per
    second, the median of `repeats` timings taken in turns, and each device / worker ratio."""
    images = [load_image(str(path)) for path in paths]
    heights = torch.tensor([image.height for image in images], device=device)  # (B,)
    widths = torch.tensor([image.width for image in images], device=device)
    padded = torch.zeros(len(images), 3, max(heights.tolist()), max(widths.tolist()), dtype=torch.uint8,
                         device=device)  # (B, 3, H_max, W_max)
    for i, image in enumerate(images):
        padded[i, :, :image.height, :image.width] = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    p, ratio, scale = recipe.num_patches, CROP_RATIO[recipe.kind], recipe.scale
    window = crop_window_sized({(image.height, image.width) for image in images}, ratio, scale)
    generator = torch.Generator(device=device).manual_seed(recipe.seed)
    transform = recipe.worker_transform()

    def device_crops(exact: bool) -> Callable[[], torch.Tensor]:
        def crop() -> torch.Tensor:  # (P·B, 3, S, S); patch n is cut from image n mod B
            boxes = sample_crops(len(heights) * p, heights.repeat(p), widths.repeat(p), ratio, generator, scale)
            return resized_crops(padded, boxes, recipe.size, CROP_FILTER[recipe.kind], window, exact)
        return crop

    with cpu_threads(1):
        seconds = timed({"worker_crops": lambda: [transform(image) for _ in range(p) for image in images],
                         "device_crops_exact": device_crops(True), "device_crops_float": device_crops(False)},
                        repeats, device)
    out: dict = {name: {"patches_per_s": p * len(images) / s} for name, s in seconds.items()}
    for mode in ("exact", "float"):
        out[f"ratio_{mode}"] = out[f"device_crops_{mode}"]["patches_per_s"] / out["worker_crops"]["patches_per_s"]
    out["threads"] = 1
    return out


def against_targets(worker: dict, on_device: dict) -> dict:
    """The device crops' patches per second over the worker crops' (target ≥ IMAGENET_TARGETS["speed"])
    and the worker crops' bytes per step over the device crops' (≥ IMAGENET_TARGETS["bytes"]), each
    with whether it meets its target."""
    speed = on_device["patches_per_s"] / worker["patches_per_s"]
    fewer = worker["bytes_per_step"] / on_device["bytes_per_step"]
    return {"speed_ratio": speed, "speed_target_met": speed >= IMAGENET_TARGETS["speed"],
            "bytes_ratio": fewer, "bytes_target_met": fewer >= IMAGENET_TARGETS["bytes"]}


def bench_imagenet(args: argparse.Namespace, cfg: dict, device: torch.device) -> dict:
    """(5) ImageNet-kind patches (224 px, bicubic) from two folders of JPEG files written into a
    temporary folder (:func:`write_colour_folder`; :data:`IMAGENET_FOLDERS`): for each, the worker
    crops and the device crops, each alone (:func:`time_patches`), the two ratios against the
    targets (:func:`against_targets`) and the crops alone (:func:`crop_stage`, on the first B
    images). The ratios compare the worker crops with the device crops from whole images sent by
    the loader; where a folder's images are equally sized, the device crops as training makes them
    (``device_crops_held``: TrainingPatches keeps such images on the device when they fit, 0 bytes
    a step) are timed too, and their speed ratio given for information. The paths run with
    cfg["threads"] torch CPU threads in this process (see :func:`imagenet_sizes`); the decoded-image
    cache (dataset/pixels.py) goes in the temporary folder."""
    out: dict = {"B": cfg["bs"], "P": cfg["num_patches"], "workers": cfg["workers"], "steps": cfg["steps"],
                 "warmup": cfg["warmup"], "threads": cfg["threads"], "device": str(device),
                 "targets": IMAGENET_TARGETS}
    with tempfile.TemporaryDirectory(prefix="benchmark-imagenet-") as tmp, pixel_cache(Path(tmp) / "pixel_cache"):
        for folder, (data, shapes) in IMAGENET_FOLDERS.items():
            root = Path(tmp) / folder
            paths = write_colour_folder(root, shapes, cfg["images"], cfg["classes"])
            size = {"data": data, "data_dir": root, "bs": cfg["bs"], "num_patches": cfg["num_patches"],
                    "workers": cfg["workers"]}
            run = run_args(args, size, "batched")
            recipe = PatchRecipe.of(run.data, run.augment, run.num_patches, run.seed, run.crop_scale)
            held = len(shapes) == 1  # equally sized: TrainingPatches may keep them on the device
            with cpu_threads(cfg["threads"]):
                worker = time_patches(run, device, "worker_crops", cfg)
                on_device = time_patches(run, device, "device_crops", cfg)
                as_trained = time_patches(run, device, "device_crops_held", cfg) if held else None
            out[folder] = {"worker_crops": worker, "device_crops": on_device, **against_targets(worker, on_device),
                           **({"device_crops_held": as_trained,
                               "held_speed_ratio": as_trained["patches_per_s"] / worker["patches_per_s"]}
                              if held else {}),
                           "crop_stage": crop_stage(paths[:cfg["bs"]], recipe, cfg["crop_repeats"], device),
                           "images": {"count": len(paths), "shapes": [list(shape) for shape in shapes],
                                      "mean_file_bytes": round(statistics.mean(p.stat().st_size for p in paths))}}
            out["patch_size"], out["crop_scale"] = recipe.size, recipe.crop_scale
    return out


def machine(device: torch.device) -> dict:
    """What ran the benchmark."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__, "python": platform.python_version()}


def imagenet_verdicts(im: dict) -> list[str]:
    """(5)'s two ratios per folder and whether each meets its target, one line each, as printed."""
    lines = []
    for folder, (_, shapes) in IMAGENET_FOLDERS.items():
        r, where = im[folder], " or ".join(f"{w}×{h}" for h, w in shapes)
        lines += [f"(5) {where}: device crops make "
                  f"{_verdict(r['speed_ratio'], r['speed_target_met'], im['targets']['speed'], '')} "
                  f"the worker crops' patches per second",
                  f"(5) {where}: device crops move "
                  f"{_verdict(r['bytes_ratio'], r['bytes_target_met'], im['targets']['bytes'], ' fewer')} "
                  f"bytes to the device per step"]
        if "device_crops_held" in r:
            lines.append(f"(5) {where}: as training makes them (images held on the device, "
                         f"{r['device_crops_held']['bytes_per_step']:,} bytes per step), device crops make "
                         f"{r['held_speed_ratio']:.2f}× the worker crops' patches per second (information)")
    return lines


def table(result: dict) -> str:
    """The results of the lines that ran as a Markdown table."""
    rows = ["| measurement | official / pil / worker crops | ours / batched / device crops | ratio |",
            "|---|---|---|---|"]
    for line, key in LINES.items():
        if key in result:
            rows += TABLE_ROWS[line](result)
    return "\n".join(rows)


def patchgen_rows(result: dict) -> list[str]:
    """(1)'s row of the table."""
    gen = result["patchgen"]
    return [f"| (1) patches per second ({result['config']['workers']} pil workers) | {gen['pil']:,.0f} | "
            f"{gen['batched']:,.0f} | {gen['ratio']:.1f}× |"]


def tcr_rows(result: dict) -> list[str]:
    """(2)'s rows of the table."""
    rows, tcr_cfg = [], result["config"]["tcr"]
    for key, r in result["tcr"].items():
        note = f" (loop timed on {r['loop_extrapolated_from_groups']} groups, scaled)" \
            if r["loop_extrapolated_from_groups"] else ""
        rows.append(f"| (2) coding rate fwd+bwd, B={tcr_cfg['batch']}, d={tcr_cfg['dim']}, {key}, ms{note} | "
                    f"{r['loop_ms']:,.1f} | {r['ours_ms']:,.1f} | {r['ratio']:.0f}× |")
    return rows


def train_rows(result: dict) -> list[str]:
    """(3)'s rows of the table."""
    train, cfg = result["train"], result["config"]["train"]["flags"]
    return [f"| (3) training steps per second ({cfg['arch']}, B={cfg['bs']}, P={cfg['num_patches']}, "
            f"{result['config']['train']['steps']} consecutive steps) | {train['pil']['steps_per_s']:.3g} | "
            f"{train['batched']['steps_per_s']:.3g} | {train['ratio']:.2f}× |",
            f"| (3) training patches per second | {train['pil']['patches_per_s']:,.0f} | "
            f"{train['batched']['patches_per_s']:,.0f} | |",
            f"| (3) model's share of the step (model alone: {train['model_alone']['steps_per_s']:.3g} steps/s) | "
            f"{train['pil']['model_share']:.0%} | {train['batched']['model_share']:.0%} | |",
            f"| (3) seconds per CIFAR-10 epoch at that size | {train['pil']['s_per_cifar10_epoch']:,.0f} | "
            f"{train['batched']['s_per_cifar10_epoch']:,.0f} | |"]


def chunks_rows(result: dict) -> list[str]:
    """(4)'s rows of the table."""
    chunks, chunk_cfg = result["chunks"], result["config"]["chunks"]
    (k1, kn), size = (chunk_cfg["chunks"][0], chunk_cfg["chunks"][-1]), chunk_cfg["flags"]
    whole, sliced = chunks[f"K={k1}"], chunks[f"K={kn}"]
    memory = "-" if chunks["memory_ratio"] is None else format(chunks["memory_ratio"], ".2f") + "×"
    return [f"| (4) one step of {size['num_patches']} patches × {size['bs']} images ({size['arch']}), "
            f"K = {k1} / K = {kn}: peak memory added, MiB | {whole['peak_bytes'] / 2**20:,.0f} | "
            f"{sliced['peak_bytes'] / 2**20:,.0f} | {memory} |",
            f"| (4) the same: seconds per step | {whole['seconds']:.2f} | {sliced['seconds']:.2f} | "
            f"{chunks['time_ratio']:.2f}× |"]


def imagenet_rows(result: dict) -> list[str]:
    """(5)'s rows of the table: per folder, patches per second and bytes per step of each crop path,
    each ratio with its target, and the crops alone."""
    im, rows = result["imagenet_patches"], []
    for folder, (_, shapes) in IMAGENET_FOLDERS.items():
        r, where = im[folder], " or ".join(f"{w}×{h}" for h, w in shapes)
        device, stage = r["device_crops"], r["crop_stage"]
        rows += [f"| (5) ImageNet-kind patches per second, {where} JPEG files (B = {im['B']}, P = {im['P']}, "
                 f"{im['workers']} workers, {im['patch_size']} px, photometric half included) | "
                 f"{r['worker_crops']['patches_per_s']:,.0f} | {device['patches_per_s']:,.0f} | "
                 f"{_verdict(r['speed_ratio'], r['speed_target_met'], im['targets']['speed'], '')} |",
                 f"| (5) the same: bytes to the device per step | {r['worker_crops']['bytes_per_step']:,} | "
                 f"{device['bytes_per_step']:,} | "
                 f"{_verdict(r['bytes_ratio'], r['bytes_target_met'], im['targets']['bytes'], ' fewer')} |",
                 f"| (5) the same: the crops alone, {stage['threads']} thread, patches per second, device "
                 f"Pillow-exact (float32: {stage['device_crops_float']['patches_per_s']:,.0f}, "
                 f"{stage['ratio_float']:.2f}×) | {stage['worker_crops']['patches_per_s']:,.0f} | "
                 f"{stage['device_crops_exact']['patches_per_s']:,.0f} | {stage['ratio_exact']:.2f}× |"]
        if "device_crops_held" in r:
            held = r["device_crops_held"]
            rows.append(f"| (5) the same, images held on the device (as training does), patches per second; "
                        f"bytes per step {held['bytes_per_step']:,} | {r['worker_crops']['patches_per_s']:,.0f} | "
                        f"{held['patches_per_s']:,.0f} | {r['held_speed_ratio']:.2f}× |")
    return rows


def _verdict(ratio: float | None, met: bool | None, target: float, word: str) -> str:
    """A ratio and whether it meets its target, in words ("-" without the device-crop path)."""
    if ratio is None:
        return "-"
    return f"{ratio:.2f}×{word} (target ≥ {target:g}×: {'met' if met else 'NOT met'})"


TABLE_ROWS: dict[str, Callable[[dict], list[str]]] = {"patchgen": patchgen_rows, "tcr": tcr_rows,
                                                      "train": train_rows, "chunks": chunks_rows,
                                                      "imagenet": imagenet_rows}


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    check_file_writable(args.out, "--out")  # before minutes of measurements
    lines = tuple(LINES) if args.only is None else (args.only,)
    cfg = {line: size for line, size in sizes(args).items() if line in lines}
    result = {"machine": machine(device), "config": {**cfg, "data": args.data, "workers": args.workers,
                                                       "precision": args.precision, "full": args.full,
                                                       "tiny": args.tiny, "only": args.only}}
    print(json.dumps(result["machine"]))
    measure = {"patchgen": lambda: bench_patchgen(args, cfg["patchgen"], device),
               "tcr": lambda: bench_tcr(cfg["tcr"], device),
               "train": lambda: bench_train(args, cfg["train"], device),
               "chunks": lambda: bench_chunks(args, cfg["chunks"], device),
               "imagenet": lambda: bench_imagenet(args, cfg["imagenet"], device)}
    for line in lines:
        result[LINES[line]] = measure[line]()
        print(f"({list(LINES).index(line) + 1}) {line}: {result[LINES[line]]}")
    write_or_print(args.out, json.dumps(result, indent=2) + "\n", "--out")
    if args.data == "synthetic" and lines != ("imagenet",):
        print("data: the built-in synthetic set (32×32, CIFAR-sized); epoch times assume CIFAR-10's 50,000 images")
    if "imagenet" in lines:
        print("\n".join(imagenet_verdicts(result["imagenet_patches"])))
    print(table(result))
    print(f"written: {args.out}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
