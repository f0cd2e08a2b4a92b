"""Streaming raw samples from WebDataset tar shards (webdataset 1.0), naming every failure."""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import webdataset as wds

from mbp.data.skips import SkipLog
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
    """Yield samples shard by shard, in the order given. A shard that is missing, not a tar or
    truncated is reported and left; the samples read before the damage still arrive.

    Every process reads every shard: training splits by sample instead (see ``encoded_stream``) so
    that every world size sees the same global batches.
    """
    urls = list(shards)

    failed: set[str] = set()

    def handler(error: Exception) -> bool:
        # webdataset reports one failure more than once, naming the shard in args or only in the text
        text = " ".join(str(a) for a in (error, *error.args))
        source = next((url for url in urls if url in text), "?")
        if source not in failed:
            failed.add(source)
            if isinstance(error, OSError) and error.strerror:
                detail = error.strerror
            else:
                detail = str(error.args[0]).split(" @ ")[0] if error.args else str(error)
            log.shard(Path(source).name, f"{type(error).__name__}: {detail}")
        return True

    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=handler),
    )
    for sample in pipeline:
        fields = {k: v for k, v in sample.items() if not k.startswith("__")}
        raw = RawSample(str(sample.get("__url__", "?")), str(sample["__key__"]), fields)
        if raw.shard in failed:
            # the sample being read when its shard broke: some of its files may be lost or cut
            log.sample(
                f"{raw.where}: cut short by the damaged shard (fields read: {', '.join(sorted(fields))})",
                "truncated",
            )
            continue
        yield raw
