"""Writing WebDataset shards from a folder (files grouped into samples by basename) or a JSONL manifest."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import webdataset as wds

from mbp.errors import DataError


def samples_from_folder(folder: Path) -> Iterator[dict[str, bytes | str]]:
    """``0001.png`` and ``0001.question.txt`` become one sample ``0001`` with fields ``png`` and
    ``question.txt``. Hidden files and sub-folders are ignored."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    groups: dict[str, dict[str, Path]] = defaultdict(dict)
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        key, dot, field = path.name.partition(".")
        if not dot or not field:
            raise DataError(f"{path}: a file name needs KEY.FIELD (e.g. 0001.png) to group into samples")
        groups[key][field] = path
    if not groups:
        raise DataError(f"{folder}: no sample files found")
    for key, fields in groups.items():
        sample: dict[str, bytes | str] = {"__key__": key}
        for field, path in fields.items():
            sample[field] = path.read_bytes()
        yield sample


def samples_from_manifest(manifest: Path) -> Iterator[dict[str, bytes | str]]:
    """One JSON object per line: field -> inline string, or ``@path`` for a file's bytes (relative to
    the manifest). A value is never taken as a file unless it says so: a text that happens to name a
    file stays text. Keys and field names become tar member names, so ``/`` and ``..`` are refused."""
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{manifest}: cannot read manifest: {error}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{manifest}:{number}: invalid JSON: {error.msg}") from None
        if not isinstance(entry, dict) or not entry:
            raise DataError(f"{manifest}:{number}: expected an object of field -> path or string")
        key = str(entry.pop("__key__", f"{number:06d}"))
        _check_name(manifest, number, "key", key, dots=False)
        sample: dict[str, bytes | str] = {"__key__": key}
        for field, value in entry.items():
            _check_name(manifest, number, "field name", field, dots=True)
            if not isinstance(value, str):
                raise DataError(f"{manifest}:{number}: field '{field}' must be a string or @path")
            if not value.startswith("@"):
                sample[field] = value.encode("utf-8")
                continue
            path = manifest.parent / value[1:]
            try:
                sample[field] = path.read_bytes()
            except OSError as error:
                raise DataError(
                    f"{manifest}:{number}: field '{field}': cannot read {path}: {error.strerror or error}"
                ) from None
        yield sample


def _check_name(manifest: Path, number: int, what: str, name: str, *, dots: bool) -> None:
    """A key or field name that would write outside the sample (``/``, ``..``) or split it differently
    when read back (a key's first ``.`` starts its field name) is an error."""
    if not name or "/" in name or "\\" in name or ".." in name or (not dots and "." in name):
        allowed = "" if dots else " or '.'"
        raise DataError(f"{manifest}:{number}: {what} {name!r} must not be empty or hold '/', '..'{allowed}")


def pack(samples: Iterator[dict[str, bytes | str]], pattern: str, maxcount: int) -> tuple[list[str], int]:
    """Write samples to shards named by ``pattern`` (e.g. ``out/train-%06d.tar``)."""
    if "%" not in pattern:
        raise DataError(f"output pattern {pattern!r} needs a %d-style shard number, e.g. out/train-%06d.tar")
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    count = 0
    written: list[str] = []
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0) as sink:
        for sample in samples:
            sink.write(sample)
            count += 1
        written = [pattern % i for i in range(sink.shard)]
    return [w for w in written if Path(w).exists()], count
