"""Speed of the fast path against the official formulation, side by side, as ratios.

Measures (1) patch generation per second, the official per-patch PIL pipeline (``--workers``
DataLoader processes, 0 = in this process) against the batched augmentation on ``--device``;
(2) the coding rate, forward + backward, ours (B×B Gram, one batched Cholesky) against the
official per-group d×d ``logdet`` loop, at B = 100, d = 1024, P = 20 and 200; (3) whole training
steps per second with each ``--augment`` path, and the model alone on one ready batch, which gives
the model's share of a step (on a GPU: how busy the data path lets the GPU be); (4) the batched
Gaussian blur at 224 px, ours (shifted sums, linear in the pixels) against the matrix form it
replaced (out = M_y · x · M_xᵀ, O(n) per pixel). Writes a JSON file and prints a Markdown table.

(1) and (3) time one path at a time over consecutive steps after a warm-up, synchronising the
device only around the timed run, as training runs; a path's loader and workers exist only for
its turn, so no path is timed on batches prefetched while another one ran.

Usage:
    python scripts/benchmark.py --threads 1            # CPU sizes, one core
    python scripts/benchmark.py --full --workers 8 --precision bf16 --channels_last   # paper size on a GPU

On a shared machine absolute numbers move with the load; the ratios, measured in one run, are
what to compare.
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset import AUGMENTS, PatchRecipe, TrainingPatches, load_split  # noqa: E402
from dataset.batched_pipeline import patches_per_chunk  # noqa: E402
from dataset.catalog import DATA_DEFAULTS  # noqa: E402
from dataset.image_ops import blur_reach, box_kernel, gaussian_blur  # noqa: E402
from dataset.pil_pipeline import BLUR_SIGMA  # noqa: E402
from dataset.sampler import ResumableSampler  # noqa: E402
from engine import NonFiniteGuard, train_step  # noqa: E402
from lars import LARS  # noqa: E402
from loss import EMPSSLLoss, total_coding_rate  # noqa: E402
from main import get_args_parser as training_flags  # noqa: E402
from model import ENCODER_DEFAULTS, Encoder  # noqa: E402
from plumbing.cli import ArgumentParser, run_cli  # noqa: E402
from plumbing.device import resolve_device  # noqa: E402
from plumbing.speed import AMP_DTYPES, compile_model, memory_format, prepare_model  # noqa: E402

T = TypeVar("T")
CIFAR10_TRAIN = 50_000  # images in one CIFAR-10 epoch, for seconds per epoch


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("EMP-SSL benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="paper size: resnet18-cifar, hidden 4096, z 1024, batch 100, 20 patches, "
                             "reported as seconds per CIFAR-10 epoch (meant for a GPU)")
    parser.add_argument("--tiny", action="store_true",
                        help="a few seconds on the CPU at toy sizes (the chain of scripts/gpu_check.sh --tiny)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the pil path (%(default)s)")
    parser.add_argument("--data", default="synthetic", choices=("synthetic", "cifar10", "imagefolder"),
                        help="training images (synthetic: the built-in 32×32 set, CIFAR-sized)")
    parser.add_argument("--data_dir", type=Path, default=DATA_DEFAULTS["data_dir"],
                        help="folder of --data cifar10/imagefolder (%(default)s)")
    parser.add_argument("--steps", type=int, default=50, help="timed consecutive training steps per path (%(default)s)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed steps before them (worker start-up, cuDNN autotuning, compilation) (%(default)s)")
    parser.add_argument("--precision", default="fp32", choices=tuple(AMP_DTYPES),
                        help="encoder precision (%(default)s)")
    parser.add_argument("--channels_last", action="store_true", help="channels-last layout in (3)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder in (3)")
    parser.add_argument("--out", type=Path, default=Path("benchmark.json"), help="JSON output (%(default)s)")
    return parser


def sizes(args: argparse.Namespace) -> dict:
    """The configuration of every measurement: CPU sizes by default, the paper's with --full,
    toy sizes with --tiny."""
    if args.tiny:
        return {"patchgen": {"batch": 8, "num_patches": 4, "repeats": 2, "warmup": 1},
                "tcr": {"batch": 8, "dim": 32, "num_patches": [4], "loop_groups": 4},
                "train": dict(arch="resnet10-cifar", hidden_dim=64, z_dim=32, batch=8, num_patches=4,
                              steps=args.steps, warmup=args.warmup),
                "blur": {"batch": 8, "size": 32, "repeats": 3},
                "chunks": dict(arch="resnet10-cifar", hidden_dim=64, z_dim=32, batch=4, num_patches=20, chunks=[1, 5])}
    model = dict(ENCODER_DEFAULTS) if args.full else \
        dict(arch="resnet10-cifar", hidden_dim=1024, z_dim=256)
    return {"patchgen": {"batch": 100, "num_patches": 20, "repeats": 20 if args.full else 5, "warmup": 2},
            "tcr": {"batch": 100, "dim": 1024, "num_patches": [20, 200], "loop_groups": 20},
            "train": {**model, "batch": 100 if args.full else 50, "num_patches": 20 if args.full else 8,
                      "steps": args.steps, "warmup": args.warmup},
            "blur": {"batch": 64, "size": 224, "repeats": 20 if args.full else 5},
            "chunks": {**dict(ENCODER_DEFAULTS), "batch": 100 if args.full else 8, "num_patches": 200,
                       "chunks": [1, 10]}}


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


def batches(args: argparse.Namespace, augment: str, num_patches: int, batch: int, device: torch.device):
    """An endless iterator over training batches of one --augment path (epochs restart)."""
    layout = memory_format(args.channels_last)
    dataset = load_split(args.data, args.data_dir, "train", download=False)
    recipe = PatchRecipe.of(args.data, augment, num_patches, seed=0)
    source = TrainingPatches(dataset, recipe, ResumableSampler(len(dataset), batch), args.workers, device, layout)
    epoch = 0
    while True:
        source.set_epoch(epoch)
        yield from source
        epoch += 1


def bench_patchgen(args: argparse.Namespace, cfg: dict, device: torch.device) -> dict:
    """(1) Patches per second of each augmentation path, one path at a time over consecutive
    batches; each path's source (and its workers) is made for its turn and closed after it."""
    out = {}
    for augment in AUGMENTS:
        it = batches(args, augment, cfg["num_patches"], cfg["batch"], device)
        out[augment] = cfg["num_patches"] * cfg["batch"] / consecutive(lambda: next(it), cfg["warmup"],
                                                                        cfg["repeats"], device)
        it.close()  # its workers stop before the next path is timed
    out["ratio"] = out["batched"] / out["pil"]
    return out


def rate_by_logdet_loop(z: torch.Tensor, eps: float) -> torch.Tensor:
    """The official formulation: for each group, ½ logdet(I_d + d/(B·ε) Z_pᵀ Z_p) with a d×d matrix."""
    _, b, d = z.shape
    eye = torch.eye(d, device=z.device)
    return torch.stack([torch.logdet(eye + d / (b * eps) * zp.T @ zp) / 2 for zp in z])  # (P,)


def bench_tcr(cfg: dict, device: torch.device) -> dict:
    """(2) Coding rate forward + backward, ours against the per-group loop; for many groups the loop
    is timed on cfg['loop_groups'] groups and scaled up (marked extrapolated)."""
    out, eps = {}, training_flags().get_default("eps")
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


def training_step(args: argparse.Namespace, cfg: dict, source: Iterator[torch.Tensor],
                  device: torch.device) -> Callable[[], None]:
    """One whole training step as main.py runs it (next batch, forward, loss, backward, LARS under
    the non-finite guard, schedule), with no host read, on a fresh model, as a closure."""
    torch.manual_seed(0)
    model = Encoder(cfg["arch"], cfg["hidden_dim"], cfg["z_dim"]).to(device)
    prepare_model(model, device, args.channels_last)
    net = compile_model(model, device) if args.compile else model
    official = training_flags().parse_args([])  # main.py's defaults: the official loss and LARS
    optimizer = LARS(model.parameters(), lr=official.lr, weight_decay=official.wd, eta=official.lars_eta)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10_000)
    criterion = EMPSSLLoss(official.patch_sim, official.tcr, official.eps)
    amp, guard = AMP_DTYPES[args.precision], NonFiniteGuard(0, device)

    def step() -> None:
        train_step(net, criterion, optimizer, next(source), cfg["num_patches"], amp, guard)
        scheduler.step()

    return step


def bench_train(args: argparse.Namespace, cfg: dict, device: torch.device) -> dict:
    """(3) Training steps per second of each augment path, one path at a time over consecutive
    steps after a warm-up, plus the model alone (every step on one batch made beforehand): the
    model's share of a step is model-alone time / whole-step time (1: the data path is hidden)."""
    out: dict = {}
    per_step = cfg["num_patches"] * cfg["batch"]
    for augment in (*AUGMENTS, "model alone"):
        it = batches(args, "batched" if augment == "model alone" else augment, cfg["num_patches"], cfg["batch"], device)
        source = itertools.repeat(next(it)) if augment == "model alone" else it
        seconds = consecutive(training_step(args, cfg, source, device), cfg["warmup"], cfg["steps"], device)
        it.close()
        out[augment] = {"steps_per_s": 1 / seconds, "patches_per_s": per_step / seconds,
                        "s_per_cifar10_epoch": seconds * (CIFAR10_TRAIN // cfg["batch"])}
    model_alone = out.pop("model alone")
    for augment in AUGMENTS:
        out[augment]["model_share"] = out[augment]["steps_per_s"] / model_alone["steps_per_s"]
    out["model_alone"] = model_alone
    out["ratio"] = out["batched"]["steps_per_s"] / out["pil"]["steps_per_s"]
    return out


def box_matrices(kernel: torch.Tensor, n: int) -> torch.Tensor:
    """The three box passes of the blur along an axis of n pixels as one matrix per patch: one pass
    with replicated edges is y = B x, B_ij = Σ_o k_o [clamp(i + o, 0, n − 1) = j], and the three
    are M = B³; O(n³) per patch to build.

    Args:
        kernel: (N, 2R + 1) box weights k from image_ops.box_kernel.
    Returns:
        (N, n, n) float32 matrices M.
    """
    reach = kernel.shape[1] // 2
    offset = torch.arange(-reach, reach + 1, device=kernel.device)  # (K,)
    source = (torch.arange(n, device=kernel.device).view(-1, 1) + offset).clamp(0, n - 1)  # (n, K)
    shifts = (source.T.unsqueeze(2) == torch.arange(n, device=kernel.device)).float()  # (K, n, n)
    box = (kernel @ shifts.reshape(len(offset), n * n)).view(-1, n, n)  # (N, n, n)
    return box @ box @ box


def blur_by_matrices(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The blur's matrix form, the reference of (4): out = M_y · x · M_xᵀ per patch (x (N, C, H, W),
    σ (N,) ≤ the official maximum), M from :func:`box_matrices`: O(n) per pixel."""
    n, c, h, w = x.shape
    kernel = box_kernel(sigma, blur_reach(BLUR_SIGMA[1]))  # (N, K)
    m_x = box_matrices(kernel, w)  # (N, W, W)
    m_y = m_x if h == w else box_matrices(kernel, h)  # (N, H, H)
    x = torch.bmm(x.reshape(n, c * h, w), m_x.transpose(1, 2))  # (N, C·H, W): x · M_xᵀ
    return m_y.unsqueeze(1) @ x.view(n, c, h, w)  # (N, C, H, W): M_y · x


def by_chunks(blur: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, sigma: torch.Tensor,
              length: int) -> torch.Tensor:
    """blur(x, σ) of patches x (N, C, H, W) computed on consecutive chunks of `length` patches into
    one output, as dataset.batched_pipeline.photometric goes."""
    out = torch.empty_like(x)
    for start in range(0, len(x), length):
        out[start:start + length] = blur(x[start:start + length], sigma[start:start + length])
    return out


def bench_blur(cfg: dict, device: torch.device) -> dict:
    """(4) Patches per second of the batched Gaussian blur, ours (image_ops.gaussian_blur) against
    the matrix form (:func:`blur_by_matrices`), on cfg['batch'] random patches of 3×size×size with
    σ ~ U[0.1, 2]: by chunks as photometric runs it (on a CPU of about CPU_CHUNK_BYTES, which keep
    every pass in the cache; elsewhere all at once), and in one call on all the patches. The first
    call of each, untimed, gives the largest difference of the two."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(cfg["batch"], 3, cfg["size"], cfg["size"], generator=generator).to(device)  # (N, 3, S, S)
    low, high = BLUR_SIGMA
    sigma = (low + (high - low) * torch.rand(cfg["batch"], generator=generator)).to(device)  # (N,)
    out: dict = {"chunk": min(patches_per_chunk(x), len(x)),
                 "max_abs_difference": (gaussian_blur(x, sigma) - blur_by_matrices(x, sigma)).abs().max().item()}
    forms = {"matrix": blur_by_matrices, "ours": gaussian_blur}
    for mode, length in (("chunks", out["chunk"]), ("one_call", len(x))):
        seconds = timed({name: lambda blur=blur: by_chunks(blur, x, sigma, length) for name, blur in forms.items()},
                        cfg["repeats"], device)
        out[mode] = {**{f"{name}_patches_per_s": len(x) / t for name, t in seconds.items()},
                     "ratio": seconds["matrix"] / seconds["ours"]}
    return out


CHUNK_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
from engine import NonFiniteGuard, train_step
from lars import LARS
from loss import EMPSSLLoss
from model import Encoder
cfg, device = json.loads({cfg!r}), torch.device({device!r})
torch.manual_seed(0)
model = Encoder(cfg["arch"], cfg["hidden_dim"], cfg["z_dim"]).to(device)
optimizer = LARS(model.parameters(), lr=0.3, weight_decay=1e-4, eta=0.005)
x = torch.randn(cfg["num_patches"] * cfg["batch"], 3, 32, 32, device=device)  # (P·B, 3, 32, 32)

def step():
    train_step(model, EMPSSLLoss(200.0, 1.0, 0.2), optimizer, x, cfg["num_patches"], None,
               NonFiniteGuard(0, device), cfg["k"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)

cuda = device.type == "cuda"
before = torch.cuda.max_memory_allocated(device) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
step()  # the first step: its peak memory (and the optimizer's and the guard's first allocations)
peak = torch.cuda.max_memory_allocated(device) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
step()
print(json.dumps({{"peak_bytes": peak - before, "seconds": time.perf_counter() - start}}))
"""


def bench_chunks(cfg: dict, device: torch.device) -> dict:
    """(5) One step of P·B patches run whole (K = 1) and in K slices (--patch_chunks): the memory it
    adds at its peak (peak CUDA memory; on the CPU the growth of the process's peak resident set) and
    the seconds of a second step, each K in a fresh process so that no allocator cache carries over."""
    out: dict = {}
    for k in cfg["chunks"]:
        code = CHUNK_CHILD.format(root=str(Path(__file__).resolve().parents[1]), cfg=json.dumps({**cfg, "k": k}),
                                  device=str(device))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[f"K={k}"] = json.loads(done.stdout.strip().splitlines()[-1])
    first, last = (out[f"K={k}"] for k in (cfg["chunks"][0], cfg["chunks"][-1]))
    # a toy step may not raise the process's peak resident set at all: then there is no ratio
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
    gen, tcr, train, blur = result["patchgen"], result["tcr"], result["train"], result["blur"]
    cfg, tcr_cfg, blur_cfg = result["config"]["train"], result["config"]["tcr"], result["config"]["blur"]
    rows = ["| measurement | official / pil | ours / batched | ratio |", "|---|---|---|---|",
            f"| (1) patches per second ({result['config']['workers']} pil workers) | {gen['pil']:,.0f} | "
            f"{gen['batched']:,.0f} | {gen['ratio']:.1f}× |"]
    for key, r in tcr.items():
        note = f" (loop timed on {r['loop_extrapolated_from_groups']} groups, scaled)" \
            if r["loop_extrapolated_from_groups"] else ""
        rows.append(f"| (2) coding rate fwd+bwd, B={tcr_cfg['batch']}, d={tcr_cfg['dim']}, {key}, ms{note} | "
                    f"{r['loop_ms']:,.1f} | {r['ours_ms']:,.1f} | {r['ratio']:.0f}× |")
    rows.append(f"| (3) training steps per second ({cfg['arch']}, B={cfg['batch']}, P={cfg['num_patches']}, "
                f"{cfg['steps']} consecutive steps) | {train['pil']['steps_per_s']:.3g} | "
                f"{train['batched']['steps_per_s']:.3g} | {train['ratio']:.2f}× |")
    rows.append(f"| (3) training patches per second | {train['pil']['patches_per_s']:,.0f} | "
                f"{train['batched']['patches_per_s']:,.0f} | |")
    rows.append(f"| (3) model's share of the step (model alone: {train['model_alone']['steps_per_s']:.3g} steps/s) | "
                f"{train['pil']['model_share']:.0%} | {train['batched']['model_share']:.0%} | |")
    rows.append(f"| (3) seconds per CIFAR-10 epoch at that size | {train['pil']['s_per_cifar10_epoch']:,.0f} | "
                f"{train['batched']['s_per_cifar10_epoch']:,.0f} | |")
    rows.append(f"| (4) blur patches per second, matrix form / ours, {blur_cfg['batch']} patches "
                f"3×{blur_cfg['size']}×{blur_cfg['size']}, σ ~ U[0.1, 2], by chunks of {blur['chunk']} "
                f"(in one call: {blur['one_call']['ratio']:.2f}×; max difference {blur['max_abs_difference']:.1e}) | "
                f"{blur['chunks']['matrix_patches_per_s']:,.0f} | {blur['chunks']['ours_patches_per_s']:,.0f} | "
                f"{blur['chunks']['ratio']:.1f}× |")
    chunks, chunk_cfg = result["chunks"], result["config"]["chunks"]
    whole, sliced = chunks[f"K={chunk_cfg['chunks'][0]}"], chunks[f"K={chunk_cfg['chunks'][-1]}"]
    rows.append(f"| (5) one step of {chunk_cfg['num_patches']} patches × {chunk_cfg['batch']} images "
                f"({chunk_cfg['arch']}), K = {chunk_cfg['chunks'][0]} / K = {chunk_cfg['chunks'][-1]}: peak memory "
                f"added, MiB | {whole['peak_bytes'] / 2**20:,.0f} | {sliced['peak_bytes'] / 2**20:,.0f} | "
                f"{'-' if chunks['memory_ratio'] is None else format(chunks['memory_ratio'], '.2f') + '×'} |")
    rows.append(f"| (5) the same: seconds per step | {whole['seconds']:.2f} | {sliced['seconds']:.2f} | "
                f"{chunks['time_ratio']:.2f}× |")
    return "\n".join(rows)


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
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
    result["blur"] = bench_blur(cfg["blur"], device)
    print(f"(4) blur: {result['blur']}")
    result["chunks"] = bench_chunks(cfg["chunks"], device)
    print(f"(5) patch chunks: {result['chunks']}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.data == "synthetic":
        print("data: the built-in synthetic set (32×32, CIFAR-sized); epoch times assume CIFAR-10's 50,000 images")
    print(table(result))
    print(f"written: {args.out}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
