"""Stopping a run cleanly: SIGTERM (what clusters send before preemption) and Ctrl-C.

While :class:`Preemption` is entered, the first SIGTERM or Ctrl-C (SIGINT) is remembered instead of
killing the process: the training loop looks at it after every step (the ranks of a launch agree on
it there with one all-reduce of a host value, no device read: distributed.max_over_ranks), stops
after the step that was running, saves last.pt and says so in one line, and the process then
exits with 128 + the signal's number (errors.Stopped: 130 after Ctrl-C, 143 after SIGTERM), not 0,
so that a shell chain, a scheduler or torchrun's agent does not take the run for a finished one
(workers that torchrun restarts after such a stop end at once: :func:`refuse_restart_after_stop`).
A second Ctrl-C quits at once, without saving.

DataLoader workers must keep serving batches until then, although a cluster signals every process
of a job and a terminal sends Ctrl-C to the whole foreground process group: :func:`leave_signals_to_parent`,
run in each worker, makes it ignore Ctrl-C and every SIGTERM except its parent's (the main
process's own shutdown of its workers, which still ends them at once).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from plumbing.distributed import earlier_stop
from plumbing.errors import Stopped, speaks


class Preemption:
    """While entered, remembers a SIGTERM or the first Ctrl-C: its number in :attr:`signum` (0
    before any); a second Ctrl-C raises KeyboardInterrupt."""

    def __enter__(self) -> Preemption:
        self.signum = 0
        self._previous = {sig: signal.signal(sig, self._request) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _request(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        if signum == signal.SIGINT and speaks():  # one process per machine says so
            print("\nCtrl-C: stopping after this step, then saving last.pt (Ctrl-C again quits at once, "
                  "without saving)", file=sys.stderr, flush=True)


def refuse_restart_after_stop(run_dir: Path) -> None:
    """In a worker that torchrun restarted (--max_restarts) after a SIGTERM or Ctrl-C stopped the run
    of this job (distributed.record_stop): say so and raise Stopped with the same signal at once,
    before anything is built, so that the stop ends the job. Nothing otherwise."""
    signum = earlier_stop()
    if signum is None:
        return
    if speaks():
        print(f"{signal.Signals(signum).name} stopped this run in an earlier attempt of this torchrun job: not "
              f"restarting; continue with --resume from {run_dir}", file=sys.stderr, flush=True)
    raise Stopped(signum)


def leave_signals_to_parent(worker_id: int) -> None:
    """DataLoader worker set-up: ignore Ctrl-C, and end on a SIGTERM sent by the parent (the main
    process) only. SIGTERM is blocked and a thread waits for it with sigwaitinfo, which names the
    sender. Without sigwaitinfo (macOS) every SIGTERM ends the worker quietly (status 0, so PyTorch
    does not raise before the main process has saved)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    if not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on inherit it

    def wait() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)

    threading.Thread(target=wait, name="sigterm-from-parent", daemon=True).start()
