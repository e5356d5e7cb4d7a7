"""The GPU check behind scripts/gpu_check.sh: one command that shows the fast path works and how
fast it is on this machine, with nothing to download.

(a) prints the GPU, driver, torch and CUDA versions; (b) runs scripts/benchmark.py --full with
bf16 and channels_last; (c) trains CIFAR-10's official one-epoch protocol (``--epoch 2
--max_steps <one epoch>``, the checkpoint after epoch 1) with ``--augment batched --precision bf16
--channels_last`` through scripts/reproduce.py, on --data_dir (a torchvision CIFAR-10 folder or an
ImageFolder tree), else on the built-in synthetic set; (d) evaluates that checkpoint and the
random-init baseline at 128 patches with kNN and the linear probe; (e) writes <out>/gpu_check.json
and prints one table. --tiny runs the same chain on the CPU at toy sizes in seconds.

Usage:
    bash scripts/gpu_check.sh --data_dir /data/cifar10 --out gpu_check
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from checkpoint import atomic_write, git_commit  # noqa: E402
from cli import ArgumentParser, run_cli  # noqa: E402
from errors import UserError  # noqa: E402
from scripts import benchmark, reproduce  # noqa: E402

FAST = "--augment batched --precision bf16 --channels_last"
ROW = "cifar10-1ep"


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("EMP-SSL GPU check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=Path, default=None,
                        help="CIFAR-10 as torchvision's folder (cifar-10-batches-py inside) or an ImageFolder "
                             "tree (train/ and val/ or test/); default: the built-in synthetic set")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder of every output (gpu_check)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers of the benchmark's pil path (8)")
    parser.add_argument("--tiny", action="store_true", help="the same chain on the CPU at toy sizes, in seconds")
    return parser


def versions() -> dict[str, str | None]:
    """GPU name, driver, torch, CUDA and cuDNN versions (None where there is no GPU)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        driver = None
    return {"gpu": gpu, "driver": driver, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": str(torch.backends.cudnn.version()) if gpu else None, "git_commit": git_commit()}


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


def run_benchmark(args: argparse.Namespace) -> dict:
    """(b) scripts/benchmark.py, --full on a GPU (--tiny: toy sizes on the CPU); its JSON."""
    out = args.out / "benchmark.json"
    size = ["--tiny", "--device", "cpu", "--steps", "2", "--warmup", "1"] if args.tiny else ["--full"]
    workers = 0 if args.tiny else args.workers  # --tiny: no worker start-up in the pil path
    argv = [*size, "--workers", str(workers), "--precision", "bf16", "--channels_last", "--out", str(out)]
    print(f"$ python scripts/benchmark.py {shlex.join(argv)}", flush=True)
    benchmark.main(benchmark.get_args_parser().parse_args(argv))
    return json.loads(out.read_text())


def run_row(args: argparse.Namespace) -> dict:
    """(c, d) the official one-epoch row on the fast path, evaluated with its baseline; its JSON."""
    train_args = FAST if args.tiny else f"{FAST} {shlex.join(data_flags(args.data_dir))}"
    argv = [ROW, "--out", str(args.out), "--run_dir", str(args.out / "run"), "--train_args", train_args,
            "--eval_args", "--augment batched", *(["--smoke"] if args.tiny else [])]
    print(f"$ python scripts/reproduce.py {shlex.join(argv)}", flush=True)
    reproduce.main(reproduce.get_args_parser().parse_args(argv))
    return json.loads((args.out / f"{ROW}{'.smoke' if args.tiny else ''}.json").read_text())


def table(result: dict) -> str:
    """(e) The check as one Markdown table."""
    bench, row, v = result["benchmark"]["train"], result["row"], result["versions"]
    lines = ["| measurement | value |", "|---|---|",
             f"| GPU, driver / torch, CUDA | {v['gpu'] or 'none (CPU)'}, {v['driver'] or '-'} / {v['torch']}, "
             f"{v['cuda'] or '-'} |",
             f"| benchmark: s per CIFAR-10 epoch, batched / pil (steps only) | "
             f"{bench['batched']['s_per_cifar10_epoch']:,.1f} / {bench['pil']['s_per_cifar10_epoch']:,.1f} |",
             f"| benchmark: model's share of a batched step | {bench['batched']['model_share']:.0%} |",
             f"| training, {row['row']} ({row['data']}): wall-clock s, all of main.py | {row['train_seconds']:,.1f} |",
             f"| evaluation at {row['test_patches']} patches: wall-clock s (random init) | "
             f"{row['eval_seconds']:,.1f} ({row['random_init_eval_seconds']:,.1f}) |",
             f"| linear top-1, final epoch / best over test epochs (random init) | {row['linear_top1_final']:.2f} / "
             f"{row['linear_top1_best_over_test_epochs']:.2f} ({row['random_init_linear_top1_final']:.2f}) |",
             f"| kNN top-1 (random init) | {row['knn_top1']:.2f} ({row['random_init_knn_top1']:.2f}) |"]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    result_path = args.out / "gpu_check.json"
    if result_path.exists():
        raise UserError(f"{result_path} exists: choose another --out (nothing there is overwritten)")
    if not args.tiny and not torch.cuda.is_available():
        raise UserError("no usable GPU: run this on a GPU machine, or pass --tiny for the CPU chain")
    data_flags(args.data_dir)  # refuse a wrong --data_dir before anything runs
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"versions": versions(), "tiny": args.tiny}
    print(json.dumps(result["versions"]), flush=True)
    result["benchmark"] = run_benchmark(args)
    result["row"] = run_row(args)
    text = json.dumps(result, indent=2)
    atomic_write(result_path, lambda tmp: tmp.write_text(text + "\n"))
    print(table(result))
    print(f"written: {result_path}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
