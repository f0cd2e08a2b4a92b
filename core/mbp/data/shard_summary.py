"""Summaries of shards: samples, fields and, for a pipeline, encoded lengths."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from mbp.data.encode import SampleEncoder
from mbp.data.read import read_samples
from mbp.data.skips import SkipLog
from mbp.data.sources import shard_name
from mbp.errors import DataError, skip_kind


def inspect_shards(shards: list[str], encoder: SampleEncoder | None, log: SkipLog) -> dict[str, Any]:
    report: dict[str, Any] = {"shards": [], "samples": 0}
    fields: dict[str, dict[str, int]] = defaultdict(lambda: {"count": 0, "bytes": 0})
    lengths: list[int] = []
    for shard in shards:
        count = 0
        for raw in read_samples([shard], log):
            count += 1
            for name, data in raw.fields.items():
                fields[name]["count"] += 1
                fields[name]["bytes"] += len(data)
            if encoder is not None:
                try:
                    lengths.append(len(encoder.encode(raw).tokens))
                except DataError as error:
                    log.sample(str(error), skip_kind(error))
        report["shards"].append({"path": shard, "name": shard_name(shard), "samples": count})
        report["samples"] += count
    report["fields"] = dict(sorted(fields.items()))
    if encoder is not None:
        report["tokens"] = (
            {"min": int(min(lengths)), "median": float(np.median(lengths)), "max": int(max(lengths))}
            if lengths
            else None
        )
    report.update(log.summary())
    return report
