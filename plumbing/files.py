"""Every file the repository writes goes through here: whole or not at all, checked before the work
that fills it, and a write that fails is one line naming the path and the cause.

- :func:`atomic_write`: a temporary file, flushed, then renamed over the path: the path holds the
  old file or the new one, never a part.
- :func:`write_file`: atomic_write into a folder it creates; any failure of the writer (OSError,
  and torch.save's RuntimeError: "[enforce fail at inline_container.cc] … unexpected pos" when the
  disk fills) becomes :class:`WriteFailed`, a UserError: ``cannot write <path> (<cause>): <what now>``.
- :func:`check_writable` (a folder), :func:`check_file_writable` (a file): an entry point writes a small file in each output folder (creating it
  for the check, then removing what it made) before it computes, so that an output that cannot be
  written is refused before the work, not after it, and nothing is left behind.
- :class:`TensorBoard`: TensorBoard's SummaryWriter whose faults (its folder, its events, its
  writer thread) are one warning, after which it writes nothing and the caller goes on.

The cause in words (:func:`failure_cause`): the system's own for a full disk ("No space left on
device"), a read-only file system or a refused permission; "<path> is a file, not a folder" for a
file in the way; "the disk is full or the file could not be written" for torch's writer.
"""
from __future__ import annotations

import errno
import os
import re
import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from plumbing.errors import UserError, speaks

PROBE_BYTES = 4096  # what check_writable writes: one page, which a full disk refuses


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call write(tmp_path), then rename tmp_path onto path, so path is always whole.

    The temporary file sits in the same folder (same file system, so the rename is atomic) and
    is flushed to disk first, then the folder entry; on any failure the temporary file is
    removed and path keeps its old content. A process killed at any moment leaves either the
    old or the new file (and possibly a stale `.name.tmpPID`, which the next run removes).
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def file_in_the_way(path: Path) -> Path | None:
    """The nearest of path and its parents that exists, when it is a file (where a folder was
    wanted); None when it is a folder."""
    for part in (path, *path.parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def failure_cause(err: BaseException, path: Path | None = None) -> str:
    """Why writing path failed, in words, from the error a writer raised (see the module's docstring)."""
    if isinstance(err, RuntimeError):  # torch.save's C++ writer
        said = re.search(r"strerror: (.+)$", str(err).strip())
        if said:
            return said.group(1)
        return "its folder does not exist" if "does not exist" in str(err) else \
            "the disk is full or the file could not be written"
    if not isinstance(err, OSError):
        return str(err) or type(err).__name__
    named = Path(err.filename) if err.filename else path
    if err.errno in (errno.EEXIST, errno.ENOTDIR) and named is not None:
        blocker = file_in_the_way(named)
        if blocker is not None:
            return f"{blocker} is a file, not a folder"
    if err.errno == errno.EISDIR:
        return f"{path or named} is a folder, not a file"
    return err.strerror or str(err)


class WriteFailed(UserError):
    """A file could not be written: path, cause (failure_cause) and the one line that says both."""

    def __init__(self, path: Path, cause: str, then: str = "") -> None:
        super().__init__(f"cannot write {path} ({cause})" + (f": {then}" if then else ""))
        self.path, self.cause = path, cause


def write_file(path: Path, write: Callable[[Path], Any], then: str = "") -> None:
    """atomic_write(path, write) into path's folder, created if missing. A failure of any kind a
    writer raises for a full disk, a read-only folder, a missing folder or a path that is a file
    (OSError, torch's RuntimeError) raises WriteFailed, whose line ends with `then` (what to do);
    nothing is left half-written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except (OSError, RuntimeError) as err:
        raise WriteFailed(path, failure_cause(err, path), then) from err


def write_text(path: Path, text: str, then: str = "") -> None:
    """The text file path, written whole (write_file)."""
    write_file(path, lambda tmp: tmp.write_text(text), then)


def write_or_print(path: Path, text: str, flag: str) -> None:
    """The result file path, written whole; when it cannot be written, the text goes to stdout, so
    nothing computed is lost, and the one line says so and names the flag that moves the file."""
    try:
        write_text(path, text)
    except WriteFailed as err:
        print(text, flush=True)
        raise WriteFailed(path, err.cause, f"the result is printed above on stdout; choose another {flag}") from err


def unwritable(folder: Path) -> str | None:
    """Why folder cannot take a file, or None: it is created when missing and a page is written in
    it, then the page and the folders made for it are removed, so the check leaves nothing behind."""
    missing = [part for part in (folder, *folder.parents) if not part.exists()]  # the deepest first
    probe = folder / f".write-check-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            probe.write_bytes(bytes(PROBE_BYTES))
        finally:
            probe.unlink(missing_ok=True)
    except OSError as err:
        return failure_cause(err, folder)
    finally:
        for part in missing:
            with suppress(OSError):  # not made here after all, or not empty any more: left as it is
                part.rmdir()
    return None


def check_writable(folder: Path, flag: str, what: str = "the folder") -> None:
    """Refuse, before any work, an output folder that cannot be written: a UserError naming it, the
    cause and the flag to change (`what` names the output in the line)."""
    cause = unwritable(folder)
    if cause is not None:
        raise UserError(f"cannot write {what} {folder} ({cause}): choose another {flag}")


def check_file_writable(path: Path, flag: str) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder where the file
    should be, or a folder that cannot take it (check_writable)."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: name the file to write")
    check_writable(path.parent, flag)


def _quiet_event_thread(args: threading.ExceptHookArgs) -> None:
    """threading.excepthook: TensorBoard's writer thread raises its fault again in the caller at the
    next write or close (where TensorBoard turns it into one line), so it prints no traceback of
    its own; every other thread is reported as before."""
    if type(args.thread).__name__ != "_AsyncWriterThread":
        _THREAD_HOOK(args)


_THREAD_HOOK = threading.excepthook


class TensorBoard:
    """torch.utils.tensorboard's SummaryWriter on folder, whose faults never stop the caller: the
    first failure (creating the folder, writing events, the writer's thread) prints one warning
    that names the folder, the cause and `then` (what the caller does without it); after it every
    call does nothing. Any SummaryWriter method can be called on it; it is a context manager."""

    def __init__(self, folder: Path, then: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # here: importing plumbing loads no TensorBoard

        threading.excepthook = _quiet_event_thread
        self.folder, self.then, self.writer = folder, then, None
        self.writer = self._guard(lambda: SummaryWriter(log_dir=str(folder)))

    def _guard(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (OSError, RuntimeError) as err:
            if speaks():
                print(f"warning: cannot write TensorBoard events in {self.folder} ({failure_cause(err)}); {self.then}",
                      file=sys.stderr, flush=True)
            self.writer = None
            return None

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            writer = self.writer
            return None if writer is None else self._guard(lambda: getattr(writer, name)(*args, **kwargs))
        return call

    def close(self) -> None:
        if self.writer is not None:
            self._guard(self.writer.close)
            self.writer = None

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
