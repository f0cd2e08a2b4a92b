"""Atomic writes: temp file, fsync, rename. A crash leaves the old file or the new one, never half."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_dir_atomically(target: Path, fill: Callable[[Path], None]) -> None:
    """Create directory ``target`` by filling a temp sibling, fsyncing every file, then renaming it.

    An existing ``target`` loses only the files ``fill`` writes anew: a folder of nothing else is
    swapped whole; a folder that holds anything more (files mbp did not write, the working directory)
    keeps it, and gets each new file by its own atomic rename.
    """
    target = Path(os.path.abspath(target))  # "." has no name and no sibling
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(tmp)
        names = sorted(path.name for path in tmp.iterdir())
        for name in names:
            with open(tmp / name, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(tmp)
        _put(tmp, target, names)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the temp folder is this call's own
        raise


def _put(tmp: Path, target: Path, names: list[str]) -> None:
    """Move the files in ``tmp`` into ``target``, removing nothing but the files they replace."""
    if not target.exists():
        os.replace(tmp, target)
        return
    present = list(target.iterdir())
    cwd = Path.cwd()
    swappable = (
        all(p.name in names and not p.is_dir() for p in present)
        and not target.is_symlink()  # renaming the link would empty the folder it points to
        and not (cwd == target or target in cwd.parents)
    )
    if swappable:
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            raise
        for path in present:
            (old / path.name).unlink()
        old.rmdir()
        return
    for name in names:
        os.replace(tmp / name, target / name)
    tmp.rmdir()
    fsync_dir(target)


def write_file_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
