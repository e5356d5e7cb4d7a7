"""The one exception type for bad user input.

Entry points catch :class:`UserError` and print its message as a single line
(``error: …``) and exit with status 2, without a traceback. Leaf modules raise it
for input the user can fix (a missing data folder, an impossible flag value); a
bug raises anything else and keeps its traceback.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable
from typing import NoReturn


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do, in one line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (`error: … (see --help)`) instead of usage plus message."""

    def error(self, message: str) -> NoReturn:
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


def one_line(err: UserError) -> str:
    """The message of a UserError. One raised in a DataLoader worker reaches the main process
    re-created around the worker's traceback text, whose last line is `errors.UserError: <msg>`."""
    lines = str(err).strip().splitlines()
    if len(lines) <= 1:
        return str(err).strip()
    return re.sub(r"^[\w.]+: ", "", lines[-1])
