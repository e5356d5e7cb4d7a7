"""The one exception type for bad user input, the one for a run that a signal stopped, and the
one line that reports an error.

Entry points (plumbing.cli.run_cli) catch :class:`UserError` and print its message as a single line
(``error: …``) and exit with status 2, without a traceback. Leaf modules raise it for input the
user can fix (a missing data folder, an impossible flag value); a bug raises anything else and
keeps its traceback. A training run that a signal stopped raises :class:`Stopped` after the line
that says so, and the process exits with 128 + the signal's number. Ctrl-C elsewhere ends a program
with the line :data:`INTERRUPTED` and status 130, also while it is still importing torch
(:func:`interrupt_in_one_line`).
"""
from __future__ import annotations

import os
import re
import signal
import sys


class Stopped(Exception):
    """A signal stopped the run at a step boundary with last.pt saved, and a line said so: the
    process exits with status 128 + the signal's number, as a shell reports a process that signal
    ended (130 for Ctrl-C, 143 for SIGTERM), without a traceback (cli.run_cli)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.status = 128 + signum


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do, in one line. exit_at_once: after
    its line the process ends without running clean-up (what remains could block or abort)."""

    exit_at_once = False


INTERRUPTED = "error: interrupted (Ctrl-C); files are written whole or not at all, so what was saved is intact"


def speaks() -> bool:
    """Whether this process tells the user what every process of a launch would tell alike: every
    process but the local ranks other than 0 of a launch of several processes (WORLD_SIZE > 1 and
    LOCAL_RANK > 0: one process per machine speaks, as before the process group forms). Outside a
    launch (no WORLD_SIZE, or 1) a process always speaks, whatever its LOCAL_RANK says; one whose
    variables are not numbers speaks too (and main.py refuses them)."""
    world, local = (os.environ.get(name, "").strip() for name in ("WORLD_SIZE", "LOCAL_RANK"))
    return not (world.isdecimal() and int(world) > 1 and local.isdecimal() and int(local) > 0)


def _quit_interrupted(signum: int, frame: object) -> None:
    print(f"\n{INTERRUPTED}", file=sys.stderr)
    raise SystemExit(128 + signum)


def interrupt_in_one_line() -> None:
    """Until :func:`plumbing.cli.run_cli` starts, Ctrl-C ends the program with the line and the
    status 130 that run_cli gives, instead of a KeyboardInterrupt traceback from the middle of
    `import torch`. An entry point run as a program calls it before its other imports; a program
    started with Ctrl-C ignored (in the background) keeps ignoring it."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _quit_interrupted)


def interrupt_as_usual() -> None:
    """Undo :func:`interrupt_in_one_line`: Ctrl-C raises KeyboardInterrupt again."""
    if signal.getsignal(signal.SIGINT) is _quit_interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def one_line(err: BaseException, typed: bool = False, sentence: bool = False) -> str:
    """One line that says what an error is about: the first line of its message (its type's name
    when the message is empty).

    A UserError raised in a DataLoader worker reaches the main process re-created around the
    worker's traceback text, whose last line is `plumbing.errors.UserError: <msg>`: then that <msg>.
    typed puts `Type: ` in front; sentence keeps the first sentence without the `[file.cc:123] `
    prefix of C++ errors, at most 200 characters (for errors of gloo and NCCL).
    """
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    if isinstance(err, UserError) and len(lines) > 1:
        return re.sub(r"^[\w.]+: ", "", lines[-1])
    line = lines[0]
    if sentence:
        line = re.sub(r"^\[[^\]]*\]\s*", "", line).split(". ")[0][:200]
    return f"{type(err).__name__}: {line}" if typed else line
