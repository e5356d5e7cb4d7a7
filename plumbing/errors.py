"""The one exception type for bad user input, the one for a run that a signal stopped, and the
one line that reports an error.

Entry points (plumbing.cli.run_cli) catch :class:`UserError` and print its message as a single line
(``error: …``) and exit with status 2, without a traceback. Leaf modules raise it for input the
user can fix (a missing data folder, an impossible flag value); a bug raises anything else and
keeps its traceback. A training run that a signal stopped raises :class:`Stopped` after the line
that says so, and the process exits with 128 + the signal's number.
"""
from __future__ import annotations

import os
import re
import signal


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


def speaks() -> bool:
    """Whether this process tells the user what every process of a launch would tell alike: local
    rank 0 under torchrun (its LOCAL_RANK; one process per machine, as before the process group
    forms), and a process started without torchrun."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


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
