"""Speed of the fast path against the official formulation, side by side, as ratios.

Measures (1) patch generation per second, the official per-patch PIL pipeline (``--workers``
DataLoader processes, 0 = in this process) against the batched augmentation on ``--device``;
(2) the coding rate, forward + backward, ours (B×B Gram, one batched Cholesky) against the
official per-group d×d ``logdet`` loop, at B = 100, d = 1024, P = 20 and 200; (3) whole training
steps per second with each ``--augment`` path, and the model alone on one ready batch, which gives
the model's share of a step (on a GPU: how busy the data path lets the GPU be); (4) one step of
200 patches per image run whole and in slices (``--patch_chunks``), each in a fresh process: the
memory it adds at its peak and its seconds. Writes a JSON file and prints a Markdown table.

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

--data imagefolder reads an ImageFolder tree, <data_dir>/train/<class>/<image> (and val/ or test/
beside it); --data cifar10 reads torchvision's CIFAR-10 folder (<data_dir>/cifar-10-batches-py/)
and never downloads it. On a shared machine absolute numbers move with the load; the ratios,
measured in one run, are what to compare.
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # first: Ctrl-C while the modules below load ends in one line, status 130
    from plumbing.errors import interrupt_in_one_line
    interrupt_in_one_line()

import torch  # noqa: E402

from build import patch_shape, training_patches  # noqa: E402
from dataset import AUGMENTS, TrainingPatches  # noqa: E402
from dataset.catalog import DATA_DEFAULTS  # noqa: E402
from engine import NonFiniteGuard, Training, seed_everything  # noqa: E402
from loss import total_coding_rate  # noqa: E402
from main import build_training  # noqa: E402
from main import get_args_parser as training_flags  # noqa: E402
from model import ENCODER_DEFAULTS  # noqa: E402
from plumbing.cli import ArgumentParser, run_cli  # noqa: E402
from plumbing.device import resolve_device  # noqa: E402
from plumbing.files import check_file_writable, write_or_print  # noqa: E402
from plumbing.speed import AMP_DTYPES, memory_format  # noqa: E402
from scripts.reproduce import flags  # noqa: E402

T = TypeVar("T")
CIFAR10_TRAIN = 50_000  # images in one CIFAR-10 epoch, for seconds per epoch
CLEAR_REFS = Path("/proc/self/clear_refs")  # Linux: writing 5 resets the resident set's peak


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
                "chunks": {"flags": {**toy, "bs": 4, "num_patches": 20}, "chunks": [1, 5]}}
    model = dict(ENCODER_DEFAULTS) if args.full else {"arch": "resnet10-cifar", "hidden_dim": 1024, "z_dim": 256}
    return {"patchgen": {"flags": {"bs": 100, "num_patches": 20}, "repeats": 20 if args.full else 5, "warmup": 2},
            "tcr": {"batch": 100, "dim": 1024, "num_patches": [20, 200], "loop_groups": 20},
            "train": {"flags": {**model, "bs": 100 if args.full else 50, "num_patches": 20 if args.full else 8},
                      "steps": args.steps, "warmup": args.warmup},
            "chunks": {"flags": {**ENCODER_DEFAULTS, "bs": 100 if args.full else 8, "num_patches": 200},
                       "chunks": [1, 10]}}


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


def table(result: dict) -> str:
    """The results as a Markdown table."""
    gen, tcr, train = result["patchgen"], result["tcr"], result["train"]
    cfg, tcr_cfg = result["config"]["train"]["flags"], result["config"]["tcr"]
    rows = ["| measurement | official / pil | ours / batched | ratio |", "|---|---|---|---|",
            f"| (1) patches per second ({result['config']['workers']} pil workers) | {gen['pil']:,.0f} | "
            f"{gen['batched']:,.0f} | {gen['ratio']:.1f}× |"]
    for key, r in tcr.items():
        note = f" (loop timed on {r['loop_extrapolated_from_groups']} groups, scaled)" \
            if r["loop_extrapolated_from_groups"] else ""
        rows.append(f"| (2) coding rate fwd+bwd, B={tcr_cfg['batch']}, d={tcr_cfg['dim']}, {key}, ms{note} | "
                    f"{r['loop_ms']:,.1f} | {r['ours_ms']:,.1f} | {r['ratio']:.0f}× |")
    rows.append(f"| (3) training steps per second ({cfg['arch']}, B={cfg['bs']}, P={cfg['num_patches']}, "
                f"{result['config']['train']['steps']} consecutive steps) | {train['pil']['steps_per_s']:.3g} | "
                f"{train['batched']['steps_per_s']:.3g} | {train['ratio']:.2f}× |")
    rows.append(f"| (3) training patches per second | {train['pil']['patches_per_s']:,.0f} | "
                f"{train['batched']['patches_per_s']:,.0f} | |")
    rows.append(f"| (3) model's share of the step (model alone: {train['model_alone']['steps_per_s']:.3g} steps/s) | "
                f"{train['pil']['model_share']:.0%} | {train['batched']['model_share']:.0%} | |")
    rows.append(f"| (3) seconds per CIFAR-10 epoch at that size | {train['pil']['s_per_cifar10_epoch']:,.0f} | "
                f"{train['batched']['s_per_cifar10_epoch']:,.0f} | |")
    chunks, chunk_cfg = result["chunks"], result["config"]["chunks"]
    (k1, kn), size = (chunk_cfg["chunks"][0], chunk_cfg["chunks"][-1]), chunk_cfg["flags"]
    whole, sliced = chunks[f"K={k1}"], chunks[f"K={kn}"]
    rows.append(f"| (4) one step of {size['num_patches']} patches × {size['bs']} images ({size['arch']}), "
                f"K = {k1} / K = {kn}: peak memory added, MiB | {whole['peak_bytes'] / 2**20:,.0f} | "
                f"{sliced['peak_bytes'] / 2**20:,.0f} | "
                f"{'-' if chunks['memory_ratio'] is None else format(chunks['memory_ratio'], '.2f') + '×'} |")
    rows.append(f"| (4) the same: seconds per step | {whole['seconds']:.2f} | {sliced['seconds']:.2f} | "
                f"{chunks['time_ratio']:.2f}× |")
    return "\n".join(rows)


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    check_file_writable(args.out, "--out")  # before minutes of measurements
    cfg = sizes(args)
    result = {"machine": machine(device), "config": {**cfg, "data": args.data, "workers": args.workers,
                                                       "precision": args.precision, "full": args.full,
                                                       "tiny": args.tiny}}
    print(json.dumps(result["machine"]))
    result["patchgen"] = bench_patchgen(args, cfg["patchgen"], device)
    print(f"(1) patches/s: {result['patchgen']}")
    result["tcr"] = bench_tcr(cfg["tcr"], device)
    print(f"(2) coding rate: {result['tcr']}")
    result["train"] = bench_train(args, cfg["train"], device)
    print(f"(3) training: {result['train']}")
    result["chunks"] = bench_chunks(args, cfg["chunks"], device)
    print(f"(4) patch chunks: {result['chunks']}")
    write_or_print(args.out, json.dumps(result, indent=2) + "\n", "--out")
    if args.data == "synthetic":
        print("data: the built-in synthetic set (32×32, CIFAR-sized); epoch times assume CIFAR-10's 50,000 images")
    print(table(result))
    print(f"written: {args.out}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
