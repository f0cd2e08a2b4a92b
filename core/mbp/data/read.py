"""Streaming raw samples from WebDataset tar shards (webdataset 1.0), naming every failure."""

from __future__ import annotations

import glob
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import webdataset as wds
from webdataset.tariterators import base_plus_ext

from mbp.data.skips import SkipLog
from mbp.data.tarscan import ShardDamageError, members
from mbp.errors import DataError

BUNDLED = "bundled:"


@dataclass(frozen=True)
class RawSample:
    shard: str
    key: str
    fields: dict[str, bytes]

    @property
    def where(self) -> str:
        return f"{Path(self.shard).name}:sample {self.key}"


def bundled_dir() -> Path:
    return Path(str(resources.files("mbp") / "bundled"))


def expand_shards(patterns: Sequence[str]) -> list[str]:
    """Expand globs and ``bundled:NAME`` (shards shipped with mbp); an unmatched pattern is an error."""
    shards: list[str] = []
    for pattern in patterns:
        if pattern.startswith(BUNDLED):
            pattern = str(bundled_dir() / pattern[len(BUNDLED) :])
        if any(ch in pattern for ch in "*?["):
            matched = sorted(glob.glob(pattern))
            if not matched:
                raise DataError(f"no shard matches {pattern}")
            shards += matched
        else:
            shards.append(pattern)
    return shards


def read_samples(shards: Sequence[str], log: SkipLog) -> Iterator[RawSample]:
    """Yield samples shard by shard, in the order given. A shard that is missing, not a tar, cut short
    or corrupt is reported and left; the samples wholly before the damage still arrive.

    Every process reads every shard: training splits by sample instead (see ``encoded_stream``) so
    that every world size sees the same global batches.
    """

    def expand(src: Any) -> Iterator[RawSample]:
        for item in src:
            yield from shard_samples(item["url"], log)

    pipeline = wds.DataPipeline(
        wds.SimpleShardList(list(shards)),
        wds.split_by_worker,
        expand,
    )
    yield from pipeline


def shard_samples(shard: str, log: SkipLog) -> Iterator[RawSample]:
    """The samples of one shard, grouped as webdataset groups them (files sharing a key, suffixes
    lower-cased). A sample is complete only once the next sample's first header, or the end of the
    archive, was read intact: when the damage comes first, the sample being read is left out and named.
    """
    name = Path(shard).name
    current: _Pending | None = None
    last: str | None = None
    try:
        for member in members(shard):
            key, suffix = base_plus_ext(member.name)
            if key is None or _is_meta(member.name):
                continue
            if current is not None and key != current.key:
                last = yield from current.emit(log)
                current = None
            current = current or _Pending(shard, key)
            current.add(suffix.lower(), member.data)
        if current is not None:
            yield from current.emit(log)
    except OSError as error:
        log.shard(name, f"cannot read: {error.strerror or error}")
    except ShardDamageError as damage:
        if damage.whole and current is not None:  # the archive ended properly: the sample is whole
            last = yield from current.emit(log)
            current = None
        if damage.member is not None and current is not None:
            key, _ = base_plus_ext(damage.member)
            if key != current.key:  # the damaged member starts the next sample: this one is whole
                last = yield from current.emit(log)
                current = _Pending(shard, key or "?")
        after = f"after sample {last}" if last is not None else "before its first sample"
        after = "after its last sample" if damage.whole else after
        log.damaged(name, f"damaged {after} (offset {damage.offset}): {damage.reason}")
        if current is not None:
            read = ", ".join(sorted(current.fields)) or "none"
            log.sample(
                f"{name}:sample {current.key}: cut short by the damage at offset {damage.offset} "
                f"(fields read: {read})",
                "truncated",
            )


def _is_meta(path: str) -> bool:
    """webdataset's metadata files (``__name__``), which are not sample fields."""
    return "/" not in path and path.startswith("__") and path.endswith("__")


class _Pending:
    """The sample whose files are being read."""

    def __init__(self, shard: str, key: str) -> None:
        self.shard, self.key = shard, key
        self.fields: dict[str, bytes] = {}
        self.duplicate: str | None = None

    def add(self, suffix: str, data: bytes) -> None:
        if suffix in self.fields:
            self.duplicate = suffix
        self.fields[suffix] = data

    def emit(self, log: SkipLog) -> Generator[RawSample, None, str]:
        """Yield the sample unless it is broken; return its key, for naming where damage begins."""
        raw = RawSample(self.shard, self.key, self.fields)
        if self.duplicate is not None:
            log.sample(f"{raw.where}: field {self.duplicate} appears twice", "bad field")
        else:
            yield raw
        return self.key
