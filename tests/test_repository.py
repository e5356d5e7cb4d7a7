"""The repository itself: nothing a run wrote is tracked, and no tracked file is large."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from conftest import ROOT

LARGEST = 1 << 20  # bytes: a tracked file above 1 MiB is data or a run's output, not source
RUN_OUTPUTS = (".pt", ".pth", ".features", ".npy")  # checkpoints, feature caches, decoded pixels


def tracked_files() -> list[str]:
    """Paths git tracks in this checkout (relative to the root)."""
    done = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("not a git checkout")
    return [path for path in done.stdout.split("\0") if path]


class TestTrackedFiles:
    def test_no_run_output_is_tracked(self) -> None:
        outputs = [path for path in tracked_files()
                   if path.endswith(RUN_OUTPUTS) or "events.out.tfevents" in path or path.endswith(".eval.json")]
        assert outputs == []

    def test_no_tracked_file_is_over_one_mib(self) -> None:
        large = [path for path in tracked_files() if (ROOT / path).is_file() and (ROOT / path).stat().st_size > LARGEST]
        assert large == []

    def test_the_default_output_folders_are_ignored(self) -> None:
        """What main.py, reproduce.py, gpu_check.py and benchmark.py write by default, and a run's
        files wherever they land, are ignored by git."""
        paths = ["logs/run/args.json", "results/cifar10-1ep.json", "gpu_check/attempt-1/gpu_check.json",
                 "benchmark.json", "data/cifar-10-batches-py/data_batch_1", "elsewhere/save_models/0.pt",
                 "elsewhere/0.pt.test-0123.features", "elsewhere/events.out.tfevents.1.host.1.0"]
        done = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
        assert sorted(done.stdout.split()) == sorted(paths)


MOST_PARAMETERS = 8  # a function that needs more takes a dataclass or the args namespace instead


def python_sources() -> list[str]:
    """The tracked Python files of the product (everything but the tests)."""
    return [path for path in tracked_files() if path.endswith(".py") and not path.startswith("tests/")]


class TestCodeShape:
    def test_no_function_takes_more_than_eight_parameters(self) -> None:
        wide = []
        for path in python_sources():
            for node in ast.walk(ast.parse((ROOT / path).read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
                    names = [name for name in names if name not in ("self", "cls")]
                    if len(names) > MOST_PARAMETERS:
                        wide.append(f"{path}:{node.lineno} {node.name} ({len(names)})")
        assert wide == []

    def test_importing_the_entry_points_loads_no_tensorboard(self) -> None:
        """main.py and evaluate.py import TensorBoard only when they write: `--help`, and a script
        that imports them for their flags, stay light."""
        probe = "import sys, main, evaluate; print('torch.utils.tensorboard' in sys.modules)"
        done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == "False", done.stderr


LAYERS = {  # what a module of each layer may import of ours (docs/layout.md)
    "plumbing": {"plumbing"},
    "leaves": {"plumbing", "loss", "lars", "optim", "model", "dataset"},
    "engine": {"plumbing", "loss", "lars", "optim", "model", "dataset", "engine", "features", "probes", "build"},
}
OURS = {"plumbing", "loss", "lars", "optim", "model", "dataset", "engine", "features", "probes", "build", "main",
        "evaluate", "hubconf", "scripts"}


def layer_of(path: str) -> str | None:
    """The layer of a product file, or None for an entry point (which may import anything)."""
    top = path.split("/")[0].removesuffix(".py")
    if top == "plumbing":
        return "plumbing"
    if top in ("loss", "lars", "optim", "model", "dataset"):
        return "leaves"
    if top in ("build", "engine", "features", "probes"):
        return "engine"
    return None


def imported_tops(path: str) -> set[str]:
    """The top-level names of ours a file imports, at any depth of the file (lazy imports too)."""
    tops = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops & OURS


class TestLayers:
    def test_imports_point_down(self) -> None:
        """plumbing imports nothing of the method; the leaves (loss, optimisers, model, dataset)
        import only plumbing and each other; the wiring never imports an entry point."""
        upward = [f"{path} imports {sorted(imported_tops(path) - LAYERS[layer])}"
                  for path in python_sources() if (layer := layer_of(path))
                  and imported_tops(path) - LAYERS[layer]]
        assert upward == []

    def test_the_leaves_import_each_other_without_a_cycle(self) -> None:
        """dataset/'s modules form no import circle (the circle the batched path once had)."""
        graph = {module_name(path): dataset_imports(path) for path in python_sources() if path.startswith("dataset/")}

        def visit(name: str, trail: tuple[str, ...]) -> None:
            assert name not in trail, " → ".join((*trail, name))
            for child in sorted(graph.get(name, ())):
                visit(child, (*trail, name))

        for name in graph:
            visit(name, ())


def module_name(path: str) -> str:
    """dataset/draws.py → dataset.draws; dataset/__init__.py → dataset."""
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def dataset_imports(path: str) -> set[str]:
    """The modules of dataset/ a file imports: `from dataset.x import …` and `from dataset import x`
    (x a module of its own, else the package), at any depth (TYPE_CHECKING blocks included)."""
    found = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "dataset":
            found |= {f"dataset.{a.name}" if (ROOT / "dataset" / f"{a.name}.py").is_file() else "dataset"
                      for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dataset."):
            found.add(node.module)
    return found
