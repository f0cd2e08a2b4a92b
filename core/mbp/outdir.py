"""Folders mbp writes into (``--out``, an import's OUT_DIR): whether they can be written, whether
replacing mbp's files there could touch the user's, and removing exactly the files mbp wrote.

A folder named as output may hold the user's own files; mbp removes only names it writes itself, so
an output folder that is, or holds, the working directory or an input is refused before anything is
replaced, rather than trusted to hold nothing else.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from mbp.errors import ConfigError, MbpError


class OutputError(MbpError):
    """The output folder cannot be written."""


def check_writable(out: Path, option: str = "--out") -> None:
    """Create ``out`` and write a probe file there, so that a failure shows before any work is done.
    The probe's name is its own: two processes probing one folder must not remove each other's."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".mbp-write-probe-") as probe:
            probe.write(b"ok")
    except OSError as error:
        raise OutputError(f"{option} {out}: cannot write there ({error.strerror or error})") from None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def refuse_unsafe_output(out: Path, option: str, inputs: Iterable[Path] = ()) -> None:
    """Refuse an output folder that replacing mbp's files in could harm: the working directory, a folder
    above it, or one holding an input (``inputs``: files the command reads)."""
    folder, cwd = Path(os.path.realpath(out)), Path(os.path.realpath(Path.cwd()))
    if folder == cwd:
        raise ConfigError(f"{option} {out} is the working directory: name a folder of its own")
    if _inside(cwd, folder):
        raise ConfigError(f"{option} {out} holds the working directory {cwd}: name a folder of its own")
    for path in inputs:
        if _inside(Path(os.path.realpath(path)), folder):
            raise ConfigError(f"{option} {out} holds the input {path}: write to another folder")


def remove_owned(folder: Path, names: Iterable[str]) -> list[str]:
    """Remove the files ``names`` from ``folder``, and ``folder`` itself if nothing else is left; return
    what stays (files mbp did not write). Never descends into anything it does not know."""
    for name in names:
        path = folder / name
        if path.is_file() or path.is_symlink():
            path.unlink()
    try:
        left = sorted(p.name for p in folder.iterdir())
    except FileNotFoundError:
        return []
    if not left:
        folder.rmdir()
    return left


__all__ = ["OutputError", "check_writable", "refuse_unsafe_output", "remove_owned"]
