"""Stopping a run cleanly: SIGTERM (what clusters send before preemption) and Ctrl-C.

While :class:`Preemption` is entered, the first SIGTERM or Ctrl-C (SIGINT) is remembered instead of
killing the process: the training loop reads the flag at its next read of the step values (every
--log_every steps, at a step boundary), saves last.pt and exits with one line. A second Ctrl-C quits
at once, without saving.

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
from typing import Any

from plumbing.errors import speaks


class Preemption:
    """While entered, remembers a SIGTERM or the first Ctrl-C in :attr:`requested` (its name in
    :attr:`signal_name`); a second Ctrl-C raises KeyboardInterrupt."""

    def __enter__(self) -> Preemption:
        self.requested, self.signal_name = False, ""
        self._previous = {sig: signal.signal(sig, self._request) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _request(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        self.requested, self.signal_name = True, signal.Signals(signum).name
        if signum == signal.SIGINT and speaks():  # one process per machine says so
            print("\nCtrl-C: stopping at the next read of the step values, then saving last.pt "
                  "(Ctrl-C again quits at once, without saving)", file=sys.stderr, flush=True)


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
