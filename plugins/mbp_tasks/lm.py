"""``lm``: language modeling over the whole stream; bits per byte overall and per codec."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from mbp.api import EncodedSample, HeadDefaults
from pydantic import BaseModel, ConfigDict


class LmParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BitsPerByte:
    """Cross-entropy in bits per token (tokens are bytes plus the few markers), overall and per codec."""

    def __init__(self) -> None:
        self.nats: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)

    def update(
        self, sample: EncodedSample, nats: np.ndarray, correct: np.ndarray, generated: bytes | None = None
    ) -> None:
        self.nats["all"] += float(nats.sum())
        self.count["all"] += len(nats)
        for span in sample.spans:
            self.nats[span.codec] += float(nats[span.start : span.end].sum())
            self.count[span.codec] += span.end - span.start

    def result(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for key in sorted(self.nats):
            name = "bpb" if key == "all" else f"bpb_{key}"
            out[name] = self.nats[key] / max(self.count[key], 1) / math.log(2)
        return out


class LmHead:
    name = "lm"
    generate_field: str | None = None
    defaults = HeadDefaults(
        # one row a step where the pipeline sets none: in a budget of minutes, more small steps learn more
        # per byte than fewer large ones. King James Bible, lm-text's model, nothing else set: 1.934
        # held-out bits per byte after 1,929 steps of one row, 2.339 after 241 steps of 8 (same arithmetic)
        batch_size=1,
        # a run of minutes sees most of its text once or twice: dropout would only slow the learning
        dropout=0.0,
        # texts are concatenated and cut into full rows; none is skipped for its length
        split_samples=True,
        selection_metric="bpb",
        selection_mode="min",
    )

    def __init__(self, params: LmParams) -> None:
        pass

    def token_weights(self, sample: EncodedSample) -> np.ndarray:
        return np.ones(len(sample.tokens), dtype=np.float32)

    def metrics(self) -> BitsPerByte:
        return BitsPerByte()
