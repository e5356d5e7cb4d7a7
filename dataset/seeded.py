"""Augmentation as a pure function of (seed, epoch, image index).

Wrapping a data set in :class:`SeededPatches` makes the random patches of image i in epoch e
depend on (seed, e, i) alone — not on the number of DataLoader workers, on which worker served
the image, nor on what ran before. A run resumed mid-epoch therefore sees the very patches the
uninterrupted run would have seen, and evaluation features are reproducible.
"""
from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed mixing (seed, epoch, index) so that nearby triples give unrelated streams."""
    x = (seed * 1_000_003 + epoch) * 10_000_019 + index
    x = (x ^ (x >> 31)) * 0x9E3779B97F4A7C15 % (1 << 64)  # splitmix-style scrambling
    return (x ^ (x >> 29)) % (1 << 63)


def step_seed(seed: int, epoch: int, step: int) -> int:
    """The seed of the batch-level draws of one training step: :func:`item_seed` of (seed, epoch, step)
    XOR a fixed 63-bit salt, so that step s and image s of an epoch draw from unrelated streams."""
    return item_seed(seed, epoch, step) ^ 0x2545F4914F6CDD1D


class SeededPatches(Dataset):
    """dataset[i] → (transform(image), label) drawn from torch's generator seeded by item_seed.

    Indices may be ints (epoch 0) or (epoch, index) pairs, as :class:`ResumableSampler` yields,
    so the epoch reaches persistent DataLoader workers with every item. The caller's global
    torch generator is left as it was.
    """

    def __init__(self, dataset: Dataset, transform: Callable[[Any], Any], seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image, label = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, epoch, index))
            return self.transform(image), label


def seed_worker(worker_id: int) -> None:
    """DataLoader worker set-up: seed Python's and NumPy's generators from the worker's torch seed
    (itself derived from the loader's seeded generator), and outlive a cluster's SIGTERM.

    A cluster that preempts a job sends SIGTERM to every process of it. The main process acts on
    it at its next read of the step values (every --log_every steps) and saves last.pt, so the
    workers must keep serving batches until then: a SIGTERM from anyone but the main process is
    ignored. The main process itself stops its workers with SIGTERM when it shuts down (PyTorch's
    and multiprocessing's terminate), and that one still ends the worker at once.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    _exit_on_sigterm_from(os.getppid())


def _exit_on_sigterm_from(parent: int) -> None:
    """End this process on a SIGTERM sent by `parent`, ignore any other: SIGTERM is blocked and a
    thread waits for it with sigwaitinfo, which names the sender. Without sigwaitinfo (macOS) every
    SIGTERM ends the process quietly (status 0, so PyTorch does not raise before the main process
    has saved)."""
    if not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on inherit it

    def wait() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)

    threading.Thread(target=wait, name="sigterm-from-parent", daemon=True).start()
