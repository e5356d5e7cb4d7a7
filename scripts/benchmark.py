"""Speed of the fast path against the official formulation, side by side, as ratios.

Measures (1) patch generation per second, the official per-patch PIL pipeline (``--workers``
DataLoader processes, 0 = in this process) against the batched augmentation on ``--device``;
(2) the coding rate, forward + backward, ours (B×B Gram, one batched Cholesky) against the
official per-group d×d ``logdet`` loop, at B = 100, d = 1024, P = 20 and 200; (3) whole training
steps per second with each ``--augment`` path. Writes a JSON file and prints a Markdown table.

Usage:
    python scripts/benchmark.py --threads 1            # CPU sizes, one core: about a minute or two
    python scripts/benchmark.py --full --workers 8     # paper size on a GPU: s per CIFAR-10 epoch

Times are medians over repeats. On a shared machine absolute numbers move with the load; the
ratios, measured in one run, are what to compare.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.source import AUGMENTS, build_train_batches  # noqa: E402
from engine import train_step  # noqa: E402
from device import resolve_device  # noqa: E402
from errors import ArgumentParser, run_cli  # noqa: E402
from lars import LARS  # noqa: E402
from loss import EMPSSLLoss, total_coding_rate  # noqa: E402
from model import Encoder  # noqa: E402
from speed import AMP_DTYPES, compile_model, prepare_model  # noqa: E402

CIFAR10_TRAIN = 50_000  # images in one CIFAR-10 epoch, for seconds per epoch


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("EMP-SSL benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="paper size: resnet18-cifar, hidden 4096, z 1024, batch 100, 20 patches, "
                             "reported as seconds per CIFAR-10 epoch (meant for a GPU)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the pil path (0)")
    parser.add_argument("--data", default="synthetic", choices=("synthetic", "cifar10", "imagefolder"),
                        help="training images (synthetic: the built-in 32×32 set, CIFAR-sized)")
    parser.add_argument("--data_dir", type=Path, default=Path("data"), help="folder of --data cifar10/imagefolder")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per path (CPU 5, --full 20)")
    parser.add_argument("--precision", default="fp32", choices=tuple(AMP_DTYPES), help="encoder precision (fp32)")
    parser.add_argument("--channels_last", action="store_true", help="channels-last layout in (3)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder in (3)")
    parser.add_argument("--out", type=Path, default=Path("benchmark.json"), help="JSON output (benchmark.json)")
    return parser


def sizes(args: argparse.Namespace) -> dict:
    """The configuration of every measurement: CPU sizes by default, the paper's with --full."""
    model = dict(arch="resnet18-cifar", hidden_dim=4096, z_dim=1024) if args.full else \
        dict(arch="resnet10-cifar", hidden_dim=1024, z_dim=256)
    return {"patchgen": {"batch": 100, "num_patches": 20, "repeats": 5 if args.full else 3},
            "tcr": {"batch": 100, "dim": 1024, "num_patches": [20, 200], "loop_groups": 20},
            "train": {**model, "batch": 100 if args.full else 50, "num_patches": 20 if args.full else 8,
                      "steps": args.steps or (20 if args.full else 5), "warmup": 3 if args.full else 1}}


def timed(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median wall seconds of each fn() over repeats calls, the fns taking turns (so that a change
    of the machine's load hits them alike), the device synchronised around each call."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def batches(args: argparse.Namespace, augment: str, num_patches: int, batch: int, device: torch.device):
    """An endless iterator over training batches of one --augment path (epochs restart)."""
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    source = build_train_batches(args.data, args.data_dir, augment, num_patches, batch, 0, device, args.workers,
                                 download=False, memory_format=layout)
    epoch = 0
    while True:
        source.set_epoch(epoch)
        yield from source
        epoch += 1


def bench_patchgen(args: argparse.Namespace, cfg: dict, device: torch.device) -> dict:
    """(1) Patches per second of each augmentation path, the first batch (worker start-up) excluded."""
    its = {augment: batches(args, augment, cfg["num_patches"], cfg["batch"], device) for augment in AUGMENTS}
    for it in its.values():
        next(it)
    seconds = timed({augment: lambda it=it: next(it) for augment, it in its.items()}, cfg["repeats"], device)
    out = {augment: cfg["num_patches"] * cfg["batch"] / s for augment, s in seconds.items()}
    out["ratio"] = out["batched"] / out["pil"]
    return out


def rate_by_logdet_loop(z: torch.Tensor, eps: float = 0.2) -> torch.Tensor:
    """The official formulation: for each group, ½ logdet(I_d + d/(B·ε) Z_pᵀ Z_p) with a d×d matrix."""
    _, b, d = z.shape
    eye = torch.eye(d, device=z.device)
    return torch.stack([torch.logdet(eye + d / (b * eps) * zp.T @ zp) / 2 for zp in z])  # (P,)


def bench_tcr(cfg: dict, device: torch.device) -> dict:
    """(2) Coding rate forward + backward, ours against the per-group loop; for many groups the loop
    is timed on cfg['loop_groups'] groups and scaled up (marked extrapolated)."""
    out = {}
    for num_patches in cfg["num_patches"]:
        z = torch.nn.functional.normalize(torch.randn(num_patches, cfg["batch"], cfg["dim"], device=device), dim=-1)
        z.requires_grad_(True)
        groups = min(num_patches, cfg["loop_groups"])
        seconds = timed({"ours": lambda: total_coding_rate(z).mean().backward(),
                         "loop": lambda: rate_by_logdet_loop(z[:groups]).mean().backward()}, 3, device)
        ours, loop = seconds["ours"], seconds["loop"] * num_patches / groups
        with torch.no_grad():
            gap = (total_coding_rate(z[:groups]) - rate_by_logdet_loop(z[:groups])).abs().max().item()
        out[f"P={num_patches}"] = {"ours_ms": 1e3 * ours, "loop_ms": 1e3 * loop, "ratio": loop / ours,
                                   "loop_extrapolated_from_groups": groups if groups < num_patches else None,
                                   "max_abs_rate_difference": gap}
    return out


def training_step(args: argparse.Namespace, cfg: dict, augment: str, device: torch.device) -> Callable[[], None]:
    """One whole training step (batch made, forward, backward, LARS) of a fresh model, as a closure."""
    torch.manual_seed(0)
    model = Encoder(cfg["arch"], cfg["hidden_dim"], cfg["z_dim"]).to(device)
    prepare_model(model, device, args.channels_last)
    net = compile_model(model, device) if args.compile else model
    optimizer = LARS(model.parameters(), lr=0.3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1000)
    criterion, amp = EMPSSLLoss(), AMP_DTYPES[args.precision]
    it = batches(args, augment, cfg["num_patches"], cfg["batch"], device)
    return lambda: train_step(net, criterion, optimizer, scheduler, next(it), cfg["num_patches"], amp)["loss"].item()


def bench_train(args: argparse.Namespace, cfg: dict, device: torch.device) -> dict:
    """(3) Training steps per second of each augment path, the paths taking turns step by step."""
    steps = {augment: training_step(args, cfg, augment, device) for augment in AUGMENTS}
    for step in steps.values():
        for _ in range(cfg["warmup"]):
            step()
    seconds = timed(steps, cfg["steps"], device)
    out = {augment: {"steps_per_s": 1 / s, "s_per_cifar10_epoch": s * (CIFAR10_TRAIN // cfg["batch"])}
           for augment, s in seconds.items()}
    out["ratio"] = out["batched"]["steps_per_s"] / out["pil"]["steps_per_s"]
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
    cfg = result["config"]["train"]
    rows = ["| measurement | official / pil | ours / batched | ratio |", "|---|---|---|---|",
            f"| (1) patches per second ({result['config']['workers']} pil workers) | {gen['pil']:,.0f} | "
            f"{gen['batched']:,.0f} | {gen['ratio']:.1f}× |"]
    for key, r in tcr.items():
        note = f" (loop timed on {r['loop_extrapolated_from_groups']} groups, scaled)" \
            if r["loop_extrapolated_from_groups"] else ""
        rows.append(f"| (2) coding rate fwd+bwd, B=100, d=1024, {key}, ms{note} | {r['loop_ms']:,.1f} | "
                    f"{r['ours_ms']:,.1f} | {r['ratio']:.0f}× |")
    rows.append(f"| (3) training steps per second ({cfg['arch']}, B={cfg['batch']}, P={cfg['num_patches']}) | "
                f"{train['pil']['steps_per_s']:.3g} | {train['batched']['steps_per_s']:.3g} | {train['ratio']:.2f}× |")
    rows.append(f"| (3) seconds per CIFAR-10 epoch at that size | {train['pil']['s_per_cifar10_epoch']:,.0f} | "
                f"{train['batched']['s_per_cifar10_epoch']:,.0f} | |")
    return "\n".join(rows)


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg = sizes(args)
    result = {"machine": machine(device), "config": {**cfg, "data": args.data, "workers": args.workers,
                                                       "precision": args.precision, "full": args.full}}
    print(json.dumps(result["machine"]))
    result["patchgen"] = bench_patchgen(args, cfg["patchgen"], device)
    print(f"(1) patches/s: {result['patchgen']}")
    result["tcr"] = bench_tcr(cfg["tcr"], device)
    print(f"(2) coding rate: {result['tcr']}")
    result["train"] = bench_train(args, cfg["train"], device)
    print(f"(3) training: {result['train']}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.data == "synthetic":
        print("data: the built-in synthetic set (32×32, CIFAR-sized); epoch times assume CIFAR-10's 50,000 images")
    print(table(result))
    print(f"written: {args.out}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
