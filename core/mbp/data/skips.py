"""Counting and naming what the data path had to skip."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from mbp.errors import warn


@dataclass
class SkipLog:
    """Skipped samples and failed shards, each reported once on stderr as one line."""

    quiet: bool = False
    samples_skipped: int = 0
    shards_failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    """Names of the shards that failed, in order."""
    max_lines: int = 50
    lengths: list[int] = field(default_factory=list)
    """Token lengths of the samples encoded (the first ``max_lengths``): what length advice is drawn from."""
    max_lengths: int = 50_000

    def encoded(self, length: int) -> None:
        if len(self.lengths) < self.max_lengths:
            self.lengths.append(length)

    def sample(self, message: str, kind: str) -> None:
        """Count a skipped sample; ``message`` names shard, sample and field."""
        self.samples_skipped += 1
        self.reasons[kind] += 1
        self._say(f"skipped {message}")

    def shard(self, where: str, reason: str) -> None:
        if self._count_shard(where):
            self._say(f"shard {where} failed: {reason}")

    def damaged(self, where: str, detail: str) -> None:
        """Count a shard that broke partway; ``detail`` says after which sample and at which offset."""
        if self._count_shard(where):
            self._say(f"shard {where}: {detail}")

    def _count_shard(self, where: str) -> bool:
        """Count a failure; whether it is this shard's first (later epochs meet the same damage)."""
        self.shards_failed += 1
        self.reasons["shard"] += 1
        if where in self.failed:
            return False
        self.failed.append(where)
        return True

    def _say(self, line: str) -> None:
        total = self.samples_skipped + self.shards_failed
        if self.quiet or total > self.max_lines:
            return
        suffix = " (further skips are counted, not printed)" if total == self.max_lines else ""
        warn(f"{line}{suffix}")

    def why_none(self, shards: list[str], none: str = "no sample in them") -> str:
        """Why ``shards`` gave no usable sample, for the one line that says so: ``N shard(s) (the first
        three): count reason, ...``, or ``none`` where nothing was skipped."""
        reasons = ", ".join(f"{n} {kind}" for kind, n in self.reasons.items()) or none
        return f"{len(shards)} shard(s) ({', '.join(shards[:3])}): {reasons}"

    def summary(self) -> dict[str, object]:
        return {
            "samples_skipped": self.samples_skipped,
            "shards_failed": self.shards_failed,
            "skip_reasons": dict(self.reasons),
            "failed_shards": list(self.failed),
        }
