"""The command-line layer of every entry point: one-line errors, flag checks, the start-up banner.

Every entry point has ``get_args_parser()`` (an :class:`ArgumentParser`) and ``main(args)``, and
runs as ``run_cli(main, get_args_parser())``: a bad flag or a :class:`errors.UserError` becomes
``error: <one line>`` on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from typing import NoReturn

from checkpoint import git_commit
from errors import UserError, one_line, speaks


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


def banner(args: argparse.Namespace) -> str:
    """The line a run starts with: the git commit and the sorted flags, as JSON."""
    return json.dumps({"git_commit": git_commit(), **dict(sorted(vars(args).items()))}, default=str)
