"""Shared helpers: run an entry point as a user would, in this process or in a subprocess, and
write the image folders that folder data sets read."""
from __future__ import annotations

import importlib
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main
from build import build_optimizer
from dataset.synthetic import generate
from plumbing.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]

# A tiny but complete training configuration: about a second on one CPU core.
TINY_RUN = ["--data", "synthetic", "--arch", "resnet10-cifar", "--hidden_dim", "64", "--z_dim", "32",
            "--num_patches", "4", "--bs", "16", "--train_subset", "64", "--workers", "0", "--device", "cpu"]


@pytest.fixture(autouse=True)
def pixel_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test keeps decoded image folders (dataset/pixels.py) in a fresh folder of its own,
    never in the real home and never in its tmp_path; subprocesses inherit it."""
    folder = tmp_path_factory.mktemp("pixel-cache")
    monkeypatch.setenv("EMP_SSL_CACHE", str(folder))
    return folder


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_script(script: str, *args: str, cwd: Path) -> Result:
    """Run `python <script> args…` from cwd in a new process and capture its output."""
    done = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Run an entry point's command line in this process (no interpreter start-up), from tmp_path:
    cli("main", *argv) → Result, exactly as `python main.py argv…` would exit and print."""
    monkeypatch.chdir(tmp_path)

    def run(module: str, *argv: str) -> Result:
        entry = importlib.import_module(module)
        capsys.readouterr()
        try:
            run_cli(entry.main, entry.get_args_parser(), list(argv))
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """Non-zero exit, no traceback, and the error as one `error: …` line that ends stderr and
    contains every fragment (a progress bar may stand before it)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line.strip() for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def optimizer_of(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    """--optimizer name for the model, as main.py builds it (its default --lr, the shared groups)."""
    return build_optimizer(model, main.get_args_parser().parse_args(["--optimizer", name]))


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every parameter and buffer, and every tensor of the optimizer's state, in a fixed order."""
    state = [v.clone() for v in model.state_dict().values()]
    for p in model.parameters():
        state += [v.clone() for _, v in sorted(optimizer.state.get(p, {}).items()) if isinstance(v, torch.Tensor)]
    return state


def write_image_folder(root: Path, classes: Sequence[str] = ("a", "b"),
                       sizes: Sequence[tuple[int, int]] = ((32, 32), (32, 32)),
                       splits: Sequence[str] = ("train",), seed: int = 0) -> Path:
    """A folder data set as `--data imagefolder` reads it: root/<split>/<class>/<i>.png.

    Every class of every split gets one random RGB PNG per (width, height) in sizes, so
    len(sizes) images per class (mixed sizes make a folder that cannot live in memory as one
    uint8 tensor). The pixels come from one generator seeded with seed: the same call writes the
    same files. Returns root.
    """
    rng = np.random.default_rng(seed)
    for split in splits:
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, (width, height) in enumerate(sizes):
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)  # (H, W, 3)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def write_shapes_folder(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """An ImageFolder tree of JPEG files as CIFAR-10 arrives unpacked: root/{train,test}/<class>/<i>.jpg,
    holding the built-in synthetic shapes (32×32, ten learnable classes). Returns root."""
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images, labels = generate(split == "train", 32, per_class)  # (N, 32, 32, 3) uint8, (N,)
        for i, (pixels, label) in enumerate(zip(images, labels)):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def write_cifar_batches(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """CIFAR-10 as torchvision stores it, in small: root/cifar-10-batches-py/ with five training
    batches, a test batch and batches.meta, holding the synthetic shapes. Their checksums are not
    CIFAR's: load it with torchvision's integrity check patched out. Returns root."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train, train_labels = generate(True, 32, train_per_class)  # (N, 32, 32, 3)
    test, test_labels = generate(False, 32, test_per_class)
    parts = np.array_split(np.arange(len(train)), 5)
    batches = {f"data_batch_{i + 1}": (train[idx], [train_labels[j] for j in idx]) for i, idx in enumerate(parts)}
    batches["test_batch"] = (test, list(test_labels))
    for name, (pixels, labels) in batches.items():
        flat = pixels.transpose(0, 3, 1, 2).reshape(len(pixels), -1)  # (n, 3·32·32), channel-major as CIFAR
        with open(folder / name, "wb") as f:
            pickle.dump({"data": flat, "labels": [int(y) for y in labels]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class_{i}" for i in range(10)]}, f)
    return root


def clusters(n: int, num_classes: int = 10, dim: int = 32, noise: float = 0.1,
             seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n points around num_classes random unit centres, (n, dim) features and (n,) labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(99)),
                                            dim=1)  # (C, dim), the same for every split
    labels = torch.randint(num_classes, (n,), generator=g)
    return centres[labels] + noise * torch.randn(n, dim, generator=g), labels


def sigterm_after_first_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next engine.train_step send this process a SIGTERM once it is done, as a scheduler
    would mid-run: main.py's Preemption catches it and stops at that step's boundary; later steps
    run as usual."""
    import engine
    step = engine.train_step

    def step_then_sigterm(*args, **kwargs):
        monkeypatch.setattr(engine, "train_step", step)
        stats = step(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return stats

    monkeypatch.setattr(engine, "train_step", step_then_sigterm)
