"""Run folders and checkpoints: whole writes (plumbing/files.py), strict loads, random-generator state.

A run folder holds `args.json` (the sorted flags, the command line and the git commit),
TensorBoard event files, and `save_models/<epoch>.pt` plus `save_models/last.pt`.
"""
from __future__ import annotations

import functools
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plumbing.errors import UserError
from plumbing.files import write_file, write_text

CHECKPOINT_DIR = "save_models"
LAST = "last.pt"
TRAINING_KEYS = ("model", "optimizer", "scheduler", "step", "rng")  # what main.py's Training.save writes
EXPORT_KEYS = ("backbone", "pre_feature", "stem")  # what scripts/export.py writes


@functools.cache
def git_commit() -> str:
    """The commit of the code being run, with `-dirty` if the tree has changes; `unknown` outside git.
    Asked of git once per process: the run record and the start-up banner share the answer."""
    root = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """torch.save(state) to path atomically; a full disk leaves the previous file intact and says so."""
    write_file(path, lambda tmp: torch.save(state, tmp),
               "the checkpoints saved before are intact: free space and --resume")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU; a missing or unreadable file is a UserError."""
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: check the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__})") from err
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(the encoder's state dict without `module.` prefixes, the checkpoint's record: training args,
    epoch, step). Ours is a dict with `model`; an official checkpoint is a bare DataParallel state dict."""
    state = load_checkpoint(path)
    if isinstance(state.get("model"), dict):
        record = {"args": state.get("args", {}), "epoch": state.get("epoch"), "step": state.get("step")}
        return strip_module_prefix(state["model"]), record
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return strip_module_prefix(state), {"args": {}}
    if all(key in state for key in EXPORT_KEYS):
        raise UserError(f"{path} is {kind_of(state)}, not a training checkpoint: load it into torchvision's resnet18 "
                        f"as scripts/export.py's docstring shows, or pass the checkpoint it was exported from")
    raise UserError(f"{path} is neither a training checkpoint (a dict with 'model') nor a state dict of tensors")


def kind_of(state: dict[str, Any]) -> str:
    """What a checkpoint dict is, in words for a message; "" for a training checkpoint of main.py
    (every key of TRAINING_KEYS)."""
    if all(key in state for key in TRAINING_KEYS):
        return ""
    if all(key in state for key in EXPORT_KEYS):
        return f"an exported backbone (scripts/export.py, from {state.get('source', 'an unnamed checkpoint')})"
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        official = all(str(key).startswith("module.") for key in state)
        return "an official state dict (nn.DataParallel's 'module.' weights)" if official else "a state dict of weights"
    keys = sorted(map(str, state))
    return f"a dict of {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}" if keys else "an empty dict"


def strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the `module.` prefix that nn.DataParallel / DDP put on every key (official
    checkpoints are such state dicts); other keys are returned unchanged."""
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def load_state_strict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: Path) -> None:
    """module.load_state_dict(strict=True), turning a key or shape mismatch into one line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "") or "none"
        raise UserError(f"{source} does not match the model (missing keys: {show(missing)}; unexpected "
                        f"keys: {show(unexpected)}; wrong shapes: {show(shapes)}): check --arch, "
                        f"--hidden_dim and --z_dim")
    module.load_state_dict(state_dict, strict=True)


def rng_state() -> dict[str, Any]:
    """The state of every random generator a run uses (Python, NumPy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators saved by :func:`rng_state`. The CUDA states go to the GPUs visible now,
    in order: states of GPUs that are no longer visible are dropped, and GPUs that were not
    visible at saving keep their own."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):  # saved with more or fewer GPUs
            torch.cuda.set_rng_state(cuda_state, index)


def link_or_copy(source: Path, target: Path) -> None:
    """Make target the file source atomically: a hard link (no second copy of the bytes), or a copy
    where the file system has no hard links; target is always whole, old or new."""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        write_file(target, lambda path: shutil.copyfile(source, path), f"{source} is whole: free space and --resume")
        return
    os.replace(tmp, target)


def existing_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files already in a run folder."""
    return sorted((run_dir / CHECKPOINT_DIR).glob("*.pt"))


def newest_epoch_checkpoint(run_dir: Path) -> Path | None:
    """save_models/<epoch>.pt of the highest epoch in a run folder (9.pt before 10.pt), or None."""
    epochs = [path for path in existing_checkpoints(run_dir) if path.stem.isdigit()]
    return max(epochs, key=lambda path: int(path.stem), default=None)


def restore_last(run_dir: Path) -> str:
    """How to make a run folder's newest epoch checkpoint its last.pt, for a message: "continue from
    its newest epoch checkpoint (9.pt) with `cp <run>/save_models/9.pt <run>/save_models/last.pt`";
    "" when the folder holds no epoch checkpoint."""
    newest = newest_epoch_checkpoint(run_dir)
    if newest is None:
        return ""
    copy = shlex.join(["cp", str(newest), str(run_dir / CHECKPOINT_DIR / LAST)])
    return f"continue from its newest epoch checkpoint ({newest.name}) with `{copy}`"


def write_run_record(run_dir: Path, args: dict[str, Any]) -> None:
    """Write args.json: the sorted flags, the command line and the git commit of this run.
    A resumed run appends its own record under `resumes`, keeping how the run was first made."""
    path = run_dir / "args.json"
    record = {"args": dict(sorted(args.items())), "command": " ".join([sys.executable, *sys.argv]),
              "git_commit": git_commit()}
    if path.exists():
        first = json.loads(path.read_text())
        first.setdefault("resumes", []).append(record)
        record = first
    write_text(path, json.dumps(record, indent=2, default=str), "choose another --output_dir")
