"""One raw sample -> one token sequence, through the pipeline's field -> codec map."""

from __future__ import annotations

import numpy as np

from mbp.config import Pipeline
from mbp.data.field_cache import FieldCache
from mbp.data.read import RawSample
from mbp.errors import CodecError, DataError, MissingFieldError, PluginExitError, ProtocolError
from mbp.heads import HeadDefaults, TaskHead
from mbp.interrupts import from_user, what_it_did
from mbp.protocol import BOS, EOS, TOKEN_DTYPE, encode_segment
from mbp.sample import EncodedSample, Span
from mbp.traits import FieldCodec, training_weights


def match_field(fields: dict[str, bytes], wanted: str) -> str | None:
    """A pipeline field ``question`` matches a sample field ``question`` or ``question.<ext>``."""
    if wanted in fields:
        return wanted
    matches = [name for name in fields if name.split(".", 1)[0] == wanted]
    return matches[0] if len(matches) == 1 else None


class SampleEncoder:
    """Encodes samples for one pipeline; the head decides the loss weight of each token."""

    def __init__(
        self, pipeline: Pipeline, fields: dict[str, FieldCodec], head: TaskHead, defaults: HeadDefaults
    ) -> None:
        self.fields = fields
        """Each field's codec with its traits, as resolved (``mbp.traits``)."""
        self.codecs = {name: field.codec for name, field in fields.items()}
        self.optional = set(pipeline.optional)
        self.head = head
        patches = pipeline.model.patches
        self.row = patches[-1] if patches else 0
        """Tokens a byte-level row predicts (0: one stage, whose rows are never skipped)."""
        self.thinning = training_weights(head, defaults) if self.row > 1 else None
        """The head's ``training_weights``, where it thins them and the model can skip rows; else None."""
        self.cache = FieldCache()
        self.following = [name for name, field in fields.items() if field.traits.augment == "run"]
        """Fields that vary in training as the run decides (``data.augment``): their codec leaves it open."""
        run_varies = bool(pipeline.data.augment)
        self.varying = {
            name: field
            for name, field in fields.items()
            if field.traits.augment == "always" or (field.traits.augment == "run" and run_varies)
        }
        """Each field whose training encodings vary (``encode_augmented``). A field that does
        not vary is encoded once and kept (``FieldCache``); one that does is encoded afresh every time."""
        self.context_weights = {name: field.traits.context_weight for name, field in fields.items()}
        self.plugins = {name: field.plugin for name, field in fields.items()}
        """The plugin that registered each field's codec, to name when its code ends the run."""

    def encode(self, raw: RawSample, augment: np.random.Generator | None = None) -> EncodedSample:
        """``augment``: a training sample, varied by the codecs that vary it (``CodecTraits.augment``)."""
        parts = [np.array([BOS], TOKEN_DTYPE)]
        spans: list[Span] = []
        offset = 1
        for name, codec in self.codecs.items():
            found = match_field(raw.fields, name)
            if found is None and name in self.optional:
                continue
            if found is None:
                have = ", ".join(sorted(raw.fields)) or "none"
                raise MissingFieldError(f"{raw.where}: missing field '{name}' (sample has: {have})")
            data = raw.fields[found]
            try:
                if augment is not None and name in self.varying:
                    tokens = encode_segment(self.varying[name].encode_augmented(data, augment))
                else:
                    tokens = self.cache.tokens(name, data, codec)
            except (CodecError, ProtocolError) as error:
                raise DataError(f"{raw.where}:field {found}: {error}") from None
            except Exception as error:  # a codec bug must cost one sample, named, never the run
                detail = " ".join(f"{type(error).__name__}: {error}".split())
                raise DataError(f"{raw.where}:field {found}: codec '{codec.name}' failed: {detail}") from None
            except (SystemExit, KeyboardInterrupt) as error:  # the codec asked to end the run: say whose
                if from_user(error):
                    raise
                did = what_it_did(error)
                owner = self.plugins[name]
                raise PluginExitError(
                    f"{raw.where}:field {found}: codec '{codec.name}' (plugin '{owner}') {did}"
                ) from None
            spans.append(Span(name, codec.name, offset, offset + len(tokens), self.context_weights[name]))
            parts.append(tokens)
            offset += len(tokens)
        if not spans:
            raise DataError(f"{raw.where}: no field of the pipeline is present")
        parts.append(np.array([EOS], TOKEN_DTYPE))
        sample = EncodedSample(raw.shard, raw.key, np.concatenate(parts), spans)
        sample.weights = self._weights(sample, augment)
        return sample

    def _weights(self, sample: EncodedSample, augment: np.random.Generator | None) -> np.ndarray:
        if augment is not None and self.thinning is not None:
            return self.thinning(sample, augment, self.row)
        return self.head.token_weights(sample)
