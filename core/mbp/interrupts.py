"""Telling the user's Ctrl-C from a ``KeyboardInterrupt`` that code raised itself.

While a command runs, the CLI's SIGINT handler raises :class:`UserInterrupt`; plugin code that raises
``KeyboardInterrupt`` (or calls ``sys.exit``) raises something else, which the core reports as that
plugin's failure instead of stopping as if the user had asked it to.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class UserInterrupt(KeyboardInterrupt):
    """The user pressed Ctrl-C (SIGINT arrived)."""


class Terminated(SystemExit):
    """SIGTERM arrived (``kill``, ``timeout``, a scheduler ending the job): raised where a command turns
    the signal into an exit so that its ``finally`` blocks run. Nobody's code called ``sys.exit``."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    raise UserInterrupt


@contextmanager
def telling_user_interrupts() -> Iterator[None]:
    """Within the block, SIGINT raises :class:`UserInterrupt`. Only where Python's default handler is in
    place and only on the main thread (the one signals reach); an ignored SIGINT stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def from_user(error: BaseException) -> bool:
    """Whether ``error`` is the user's Ctrl-C or a SIGTERM from outside. Where SIGINT is ignored (a
    background job, some CI runners) no Ctrl-C can arrive, so every ``KeyboardInterrupt`` was raised by
    code; where the CLI's handler is not in place otherwise (mbp used as a library) none can be told
    apart, so every ``KeyboardInterrupt`` counts as the user's."""
    if isinstance(error, (UserInterrupt, Terminated)):
        return True
    if not isinstance(error, KeyboardInterrupt):
        return False
    handler = signal.getsignal(signal.SIGINT)
    return handler is not _on_sigint and handler is not signal.SIG_IGN


def what_it_did(error: BaseException) -> str:
    """``sys.exit(3)`` -> "called sys.exit(3)"; a KeyboardInterrupt -> "raised KeyboardInterrupt"."""
    if isinstance(error, SystemExit):
        return f"called sys.exit({error.code!r})"
    return f"raised {type(error).__name__}"
