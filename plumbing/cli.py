"""The command-line layer of every entry point: one-line errors, flag checks, the start-up banner.

Every entry point has ``get_args_parser()`` (an :class:`ArgumentParser`) and ``main(args)``, and
runs as ``run_cli(main, get_args_parser())``: a bad flag or a :class:`plumbing.errors.UserError` becomes
``error: <one line>`` on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import NoReturn

from plumbing.checkpoint import git_commit
from plumbing.errors import INTERRUPTED, Stopped, UserError, interrupt_as_usual, one_line, speaks


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (`error: … (see --help)`) instead of usage plus message;
    under torchrun only :func:`speaks` prints it, and every process exits with status 2."""

    def error(self, message: str) -> NoReturn:
        if speaks():
            print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def default_workers() -> int:
    """The default of every --workers flag: 8 DataLoader processes, or the machine's cores if fewer."""
    return min(8, os.cpu_count() or 1)


def require(checks: Iterable[tuple[bool, str]]) -> None:
    """Raise a UserError with the message of the first (ok, message) check that is not ok."""
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def run_cli(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
            argv: list[str] | None = None) -> None:
    """Parse argv (default: the command line) and call main; a UserError becomes
    `error: <message>` on stderr and exit status 2 (as argparse does for a bad flag), Ctrl-C
    `error: interrupted` and status 130, without a traceback. A training run catches its own
    first Ctrl-C or SIGTERM and stops at a step boundary with last.pt saved, says so, and ends
    with :class:`errors.Stopped`: status 130 or 143, nothing more printed. Before it, while the entry
    point imported its modules, errors.interrupt_in_one_line gave Ctrl-C the same line and status."""
    interrupt_as_usual()
    try:
        main(parser.parse_args(argv))
    except Stopped as stop:
        sys.exit(stop.status)
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        if err.exit_at_once:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\n{INTERRUPTED}", file=sys.stderr)
        sys.exit(130)


def banner(args: argparse.Namespace) -> str:
    """The line a run starts with: the git commit and the sorted flags, as JSON."""
    return json.dumps({"git_commit": git_commit(), **dict(sorted(vars(args).items()))}, default=str)
