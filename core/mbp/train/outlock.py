"""One run at a time in a run folder: ``mbp run`` holds an exclusive ``flock`` on ``OUT/.mbp.lock``.

Two runs, a resume beside a live run, or an overwrite under it would interleave metrics and
checkpoints, so the second is refused, naming the process that holds the folder (its PID is written
in the lock file). The kernel drops a ``flock`` when its process dies however it dies, so a lock file
that can be locked belongs to nobody; if it still names a process, that one died without cleaning up
(``kill -9``), and the lock is taken over with a note. A run removes the file on any exit it sees:
return, exception, or SIGTERM (turned into an exit while the lock is held).
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from mbp.errors import MbpError, stderr_line
from mbp.interrupts import Terminated
from mbp.outdir import check_writable

LOCK = ".mbp.lock"


class OutputBusyError(MbpError):
    """Another live process writes into the output folder."""


@contextmanager
def holding(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock for the ``with`` block; SIGTERM inside it exits through the block."""
    check_writable(out)
    fd = _acquire(out)
    path = out / LOCK
    try:
        with _sigterm_exits():
            yield
    finally:
        path.unlink(missing_ok=True)  # before the unlock: a waiting process then finds a fresh file
        os.close(fd)


def _acquire(out: Path) -> int:
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd) or "?"
            os.close(fd)
            raise OutputBusyError(
                f"--out {out}: process {holder} is running there (lock {path}): "
                "wait for it to end or choose another --out"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
    stale = _read(fd)
    if stale:
        stderr_line(f"mbp: --out {out}: process {stale} ended without releasing its lock; taking it over")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read(fd: int) -> str:
    return os.pread(fd, 32, 0).decode("ascii", "replace").strip()


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` (exit 143): ``finally`` blocks (the lock's among them) run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["LOCK", "OutputBusyError", "holding"]
