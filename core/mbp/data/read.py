"""Streaming raw samples from WebDataset tar shards (webdataset 1.0), naming every failure."""

from __future__ import annotations

import glob
import os
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import webdataset as wds
from braceexpand import braceexpand
from webdataset.tariterators import base_plus_ext

from mbp.data.skips import SkipLog
from mbp.data.sources import SourceError, check_source, is_stream, shard_members, shard_name
from mbp.data.tarscan import ShardDamageError
from mbp.errors import ConfigError, DataError

BUNDLED = "bundled:"
MAX_MEMBER_BYTES = 256 << 20
"""The default limit on one member's bytes, far above any real field: a member over the limit is
named and skipped with its sample, unread, so that no shard can claim more memory than this."""
LIMIT_VARIABLE = "MBP_MAX_MEMBER_BYTES"


@dataclass(frozen=True)
class RawSample:
    shard: str
    key: str
    fields: dict[str, bytes]

    @property
    def where(self) -> str:
        return f"{shard_name(self.shard)}:sample {self.key}"


def bundled_dir() -> Path:
    return Path(str(resources.files("mbp") / "bundled"))


def expand_shards(patterns: Sequence[str], *, origin: str | None = None) -> list[str]:
    """Expand brace lists (``train-{000000..000099}.tar``, ``{a,b}``, as webdataset does), then globs
    and ``bundled:NAME`` (shards shipped with mbp); an unmatched glob is an error. URLs and ``pipe:``
    commands are kept as they are (a ``?`` in a URL is no glob).

    Args:
        origin: the config key the patterns come from, when they do (``data.train_shards``): a config
            names no command unless the user allows it (see :func:`mbp.data.sources.check_source`).

    Raises:
        ConfigError: unbalanced braces, an unknown URL scheme, or a command from a config.
        DataError: a glob matches no file.
    """
    shards: list[str] = []
    for given in patterns:
        try:
            expanded = list(braceexpand(given))
        except ValueError:  # braceexpand's UnbalancedBracesError, which its type stubs leave out
            raise ConfigError(f"shard pattern {given}: unbalanced braces") from None
        for pattern in expanded:
            check_source(pattern, origin)
            if pattern.startswith(BUNDLED):
                pattern = str(bundled_dir() / pattern[len(BUNDLED) :])
            if not is_stream(pattern) and any(ch in pattern for ch in "*?["):
                matched = sorted(glob.glob(pattern))
                if not matched:
                    raise DataError(f"no shard matches {pattern}")
                shards += matched
            else:
                shards.append(pattern)
    return shards


def member_limit() -> int:
    """The limit on one member's bytes: ``MBP_MAX_MEMBER_BYTES``, else ``MAX_MEMBER_BYTES``.

    Raises:
        ConfigError: the variable is set to anything but a whole number above 0.
    """
    given = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not given:
        return MAX_MEMBER_BYTES
    if not given.isdigit() or int(given) == 0:
        raise ConfigError(f"{LIMIT_VARIABLE} must be a whole number of bytes above 0, not {given!r}")
    return int(given)


def read_samples(shards: Sequence[str], log: SkipLog, kept: ShardCache | None = None) -> Iterator[RawSample]:
    """Yield samples shard by shard, in the order given. A shard that is missing, not a tar, cut short
    or corrupt is reported and left; the samples wholly before the damage still arrive. ``kept``: shards
    read before come from memory (``ShardCache``).

    Reads every shard of ``shards``: which shards a process of a distributed run reads is decided
    before (:mod:`mbp.data.ranks`).
    """

    def expand(src: Any) -> Iterator[RawSample]:
        for item in src:
            yield from (shard_samples(item["url"], log) if kept is None else kept.samples(item["url"], log))

    pipeline = wds.DataPipeline(
        wds.SimpleShardList(list(shards)),
        wds.split_by_worker,
        expand,
    )
    yield from pipeline


READ_CACHE_BYTES = 256 << 20
"""Field bytes a training stream keeps at most: shards read after it is full are read every epoch."""


class ShardCache:
    """The samples of shards read whole and intact, kept for the next epoch to take from memory. On
    the bundled demo, with its encodings kept (``FieldCache``), parsing tar headers was half of what
    was left of making a batch (1.2 of 2.4 ms). A shard with damage or skipped samples is read again
    every epoch, as before, so what it reports stays true; its warnings are printed once either way."""

    def __init__(self, budget: int = READ_CACHE_BYTES) -> None:
        self.budget = budget
        self.held = 0
        self._samples: dict[str, list[RawSample]] = {}

    def samples(self, shard: str, log: SkipLog) -> Iterator[RawSample]:
        kept = self._samples.get(shard)
        if kept is not None:
            yield from kept
            return
        troubles = log.samples_skipped + log.shards_failed
        read: list[RawSample] | None = []
        size = 0
        for raw in shard_samples(shard, log):
            if read is not None:
                size += sum(len(data) for data in raw.fields.values())
                if self.held + size > self.budget:
                    read = None
                else:
                    read.append(raw)
            yield raw
        # only a shard read to its end: a stream closed partway (a probe, a resumed run) keeps nothing
        if read is not None and log.samples_skipped + log.shards_failed == troubles:
            self._samples[shard] = read
            self.held += size

    def __len__(self) -> int:
        return len(self._samples)


def shard_samples(shard: str, log: SkipLog) -> Iterator[RawSample]:
    """The samples of one shard, grouped as webdataset groups them (files sharing a key, suffixes
    lower-cased). A sample is complete only once the next sample's first header, or the end of the
    archive, was read intact: when the damage comes first, the sample being read is left out and named.
    """
    name = shard_name(shard)
    limit = member_limit()
    current: _Pending | None = None
    last: str | None = None
    try:
        for member in shard_members(shard, limit):
            key, suffix = base_plus_ext(member.name)
            if key is None or _is_meta(member.name):
                continue
            if current is not None and key != current.key:
                last = yield from current.emit(log)
                current = None
            current = current or _Pending(shard, key)
            if member.data is None:
                current.too_large = current.too_large or (
                    f"member {member.name} holds {member.size} bytes, over the limit of {limit} "
                    f"({LIMIT_VARIABLE}); not read"
                )
            else:
                current.add(suffix.lower(), member.data)
        if current is not None:
            yield from current.emit(log)
    except OSError as error:
        log.shard(name, f"cannot read: {error.strerror or error}")
    except SourceError as error:
        log.shard(name, error.reason)
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
        self.too_large: str | None = None
        """Why the sample is left out: one of its members is over the limit (its data was never read)."""

    def add(self, suffix: str, data: bytes) -> None:
        if suffix in self.fields:
            self.duplicate = suffix
        self.fields[suffix] = data

    def emit(self, log: SkipLog) -> Generator[RawSample, None, str]:
        """Yield the sample unless it is broken; return its key, for naming where damage begins."""
        raw = RawSample(self.shard, self.key, self.fields)
        if self.too_large is not None:
            log.sample(f"{raw.where}: {self.too_large}", "too large")
        elif self.duplicate is not None:
            log.sample(f"{raw.where}: field {self.duplicate} appears twice", "bad field")
        else:
            yield raw
        return self.key
