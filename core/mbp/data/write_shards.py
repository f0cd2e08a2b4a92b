"""Writing WebDataset shards from a folder (files grouped into samples by basename) or a manifest
(JSONL or CSV). Field names are stored lower-cased, as the reader reads them back."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import webdataset as wds

from mbp.errors import ConfigError, DataError

Sample = dict[str, bytes | str]
PARTIAL = ".partial-"
"""Shards are written under this prefix (a hidden name, its extension kept for the writer to choose
the compression by) and renamed once every sample is in, so a pack that fails halfway replaces
nothing and leaves nothing that a glob of the output pattern would read."""


def samples_from_folder(folder: Path) -> Iterator[Sample]:
    """``0001.png`` and ``0001.question.txt`` become one sample ``0001`` with fields ``png`` and
    ``question.txt``. Hidden files and sub-folders are ignored. The folder is grouped before the first
    sample is yielded, so a misnamed file stops the pack before anything is written."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    groups: dict[str, dict[str, Path]] = defaultdict(dict)
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        key, dot, field = path.name.partition(".")
        if not dot or not field:
            raise DataError(f"{path}: a file name needs KEY.FIELD (e.g. 0001.png) to group into samples")
        if field.lower() in groups[key]:
            other = groups[key][field.lower()].name
            raise DataError(
                f"{folder}: {other} and {path.name} name one field of sample {key} "
                "(field names are case-insensitive): rename one"
            )
        groups[key][field.lower()] = path
    if not groups:
        raise DataError(f"{folder}: no sample files found")
    return _read_groups(groups)


def _read_groups(groups: dict[str, dict[str, Path]]) -> Iterator[Sample]:
    for key, fields in groups.items():
        sample: Sample = {"__key__": key}
        for field, path in fields.items():
            sample[field] = path.read_bytes()
        yield sample


def samples_from_manifest(manifest: Path) -> Iterator[Sample]:
    """Samples of a JSONL manifest (one object a line) or, for a ``.csv`` file, of a CSV manifest
    (a header row of field names, one sample a row): field -> inline string, or ``@path`` for a file's
    bytes (relative to the manifest). A value is never taken as a file unless it says so: a text that
    happens to name a file stays text. ``__key__`` names the sample (default: its line number). Keys
    and field names become tar member names, so ``/`` and ``..`` are refused."""
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{manifest}: cannot read manifest: {error}") from None
    entries = (
        _csv_entries(manifest, text) if manifest.suffix.lower() == ".csv" else _jsonl_entries(manifest, text)
    )
    for number, entry in entries:
        yield _sample(manifest, number, entry)


def _jsonl_entries(manifest: Path, text: str) -> Iterator[tuple[int, dict[str, object]]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{manifest}:{number}: invalid JSON: {error.msg}") from None
        if not isinstance(entry, dict) or not entry:
            raise DataError(f"{manifest}:{number}: expected an object of field -> path or string")
        yield number, entry


def _csv_entries(manifest: Path, text: str) -> Iterator[tuple[int, dict[str, object]]]:
    """Rows as field -> value; an empty cell leaves the field out of that sample (a column is shared
    by every row, an optional field is not)."""
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{manifest}: empty CSV manifest (expected a header row of field names)") from None
    except csv.Error as error:
        raise DataError(f"{manifest}:1: invalid CSV: {error}") from None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise DataError(f"{manifest}:{reader.line_num}: invalid CSV: {error}") from None
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(
                f"{manifest}:{reader.line_num}: {len(row)} values for {len(header)} columns "
                f"({', '.join(header)})"
            )
        entry: dict[str, object] = {f: value for f, value in zip(header, row, strict=True) if value != ""}
        yield reader.line_num, entry


def _sample(manifest: Path, number: int, entry: dict[str, object]) -> Sample:
    key = str(entry.pop("__key__", f"{number:06d}"))
    _check_name(manifest, number, "key", key, dots=False)
    sample: Sample = {"__key__": key}
    named: dict[str, str] = {}
    for field, value in entry.items():
        _check_name(manifest, number, "field name", field, dots=True)
        if field.lower() in named:
            raise DataError(
                f"{manifest}:{number}: fields {named[field.lower()]!r} and {field!r} differ only in case "
                "(field names are case-insensitive)"
            )
        named[field.lower()] = field
        if not isinstance(value, str):
            raise DataError(f"{manifest}:{number}: field '{field}' must be a string or @path")
        sample[field.lower()] = _value(manifest, number, field, value)
    return sample


def _value(manifest: Path, number: int, field: str, value: str) -> bytes:
    if not value.startswith("@"):
        return value.encode("utf-8")
    path = manifest.parent / value[1:]
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(
            f"{manifest}:{number}: field '{field}': cannot read {path}: {error.strerror or error}"
        ) from None


def _check_name(manifest: Path, number: int, what: str, name: str, *, dots: bool) -> None:
    """A key or field name that would write outside the sample (``/``, ``..``) or split it differently
    when read back (a key's first ``.`` starts its field name) is an error."""
    if not name or "/" in name or "\\" in name or ".." in name or (not dots and "." in name):
        allowed = "" if dots else " or '.'"
        raise DataError(f"{manifest}:{number}: {what} {name!r} must not be empty or hold '/', '..'{allowed}")


def existing_shards(pattern: str) -> list[Path]:
    """Files that ``pattern`` names with any shard number, in order: what a pack to it would replace
    and what a glob of it would read."""
    folder, name = Path(pattern).parent, Path(pattern).name
    found = re.search(r"%0?\d*d", name)
    if "%" in str(folder) or found is None:
        raise DataError(
            f"output pattern {pattern!r} needs a %d-style shard number in its file name, "
            "e.g. out/train-%06d.tar"
        )
    shape = re.compile(re.escape(name[: found.start()]) + r"\d+" + re.escape(name[found.end() :]))
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if shape.fullmatch(path.name))


def refuse_existing(patterns: Iterable[str], force: bool) -> list[Path]:
    """The shards already there under ``patterns``; an error naming the first unless ``force``."""
    existing = [path for pattern in patterns for path in existing_shards(pattern)]
    if existing and not force:
        raise ConfigError(f"{existing[0]} exists; pass --force to overwrite it")
    return existing


def drop_stale(existing: Iterable[Path], written: Iterable[str]) -> list[str]:
    """Remove the shards of an earlier pack that this one did not rewrite (a glob would mix them in)."""
    kept = {Path(path) for path in written}
    stale = [path for path in existing if path not in kept]
    for path in stale:
        path.unlink(missing_ok=True)
    return [str(path) for path in stale]


def pack(samples: Iterable[Sample], pattern: str, maxcount: int) -> tuple[list[str], int]:
    """Write samples to shards named by ``pattern`` (e.g. ``out/train-%06d.tar``); no sample, no shard.
    The shards appear under their names only once all of them are written."""
    existing_shards(pattern)  # checks the pattern
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    partial = str(Path(pattern).parent / (PARTIAL + Path(pattern).name))
    count = 0
    sink = wds.ShardWriter(partial, maxcount=maxcount, verbose=0)
    try:
        for sample in samples:
            sink.write(sample)
            count += 1
    except BaseException:
        opened = sink.shard
        sink.close()
        for index in range(opened):
            Path(partial % index).unlink(missing_ok=True)
        raise
    opened = sink.shard
    sink.close()
    written = []
    for index in range(opened):
        if count == 0:
            Path(partial % index).unlink(missing_ok=True)
        else:
            written.append(str(Path(partial % index).replace(pattern % index)))
    return written, count
