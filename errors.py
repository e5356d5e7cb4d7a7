"""The one exception type for bad user input.

Entry points catch :class:`UserError` and print its message as a single line
(``error: …``) and exit with status 2, without a traceback. Leaf modules raise it
for input the user can fix (a missing data folder, an impossible flag value); a
bug raises anything else and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import NoReturn


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do, in one line."""


def speaks() -> bool:
    """Whether this process tells the user what every process of a launch would tell alike: local
    rank 0 under torchrun (its LOCAL_RANK; one process per machine, as before the process group
    forms), and a process started without torchrun."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (`error: … (see --help)`) instead of usage plus message;
    under torchrun only :func:`speaks` prints it, and every process exits with status 2."""

    def error(self, message: str) -> NoReturn:
        if speaks():
            print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def require(checks: Iterable[tuple[bool, str]]) -> None:
    """Raise a UserError with the message of the first (ok, message) check that is not ok."""
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def run_cli(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
            argv: list[str] | None = None) -> None:
    """Parse argv (default: the command line) and call main; a UserError becomes
    `error: <message>` on stderr and exit status 2 (as argparse does for a bad flag), without a
    traceback."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)


def one_line(err: BaseException, typed: bool = False, sentence: bool = False) -> str:
    """One line that says what an error is about: the first line of its message (its type's name
    when the message is empty).

    A UserError raised in a DataLoader worker reaches the main process re-created around the
    worker's traceback text, whose last line is `errors.UserError: <msg>`: then that <msg>.
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
