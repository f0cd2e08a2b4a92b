"""One raw sample -> one token sequence, through the pipeline's field -> codec map."""

from __future__ import annotations

import numpy as np

from mbp.codec import Augmenting, Codec, ContextWeighting, ReadingView
from mbp.components import ComponentTable
from mbp.config import Pipeline
from mbp.data.field_cache import FieldCache
from mbp.data.read import RawSample
from mbp.errors import CodecError, DataError, MissingFieldError, PluginError, PluginExitError, ProtocolError
from mbp.heads import FieldHead, TaskHead, ThinningHead
from mbp.interrupts import from_user, what_it_did
from mbp.protocol import BOS, EOS, TOKEN_DTYPE, encode_segment
from mbp.sample import EncodedSample, Span


def match_field(fields: dict[str, bytes], wanted: str) -> str | None:
    """A pipeline field ``question`` matches a sample field ``question`` or ``question.<ext>``."""
    if wanted in fields:
        return wanted
    matches = [name for name in fields if name.split(".", 1)[0] == wanted]
    return matches[0] if len(matches) == 1 else None


def field_codecs(pipeline: Pipeline, components: ComponentTable, head: TaskHead) -> dict[str, Codec]:
    """Each field's codec; a field that a head answers from (not the answer itself) gets the codec's
    reading view (``ReadingView``). Training, evaluation and ``mbp generate`` all encode through this."""
    answered = head.field if isinstance(head, FieldHead) else None
    codecs: dict[str, Codec] = {}
    for name, ref in pipeline.fields.items():
        codec: Codec = components.build("codecs", ref.as_dict())
        if answered is not None and name != answered and isinstance(codec, ReadingView):
            codec = codec.for_reading()
        codecs[name] = codec
    return codecs


class SampleEncoder:
    """Encodes samples for one pipeline; the head decides the loss weight of each token."""

    def __init__(self, pipeline: Pipeline, components: ComponentTable, head: TaskHead) -> None:
        self.codecs = field_codecs(pipeline, components, head)
        self.optional = set(pipeline.optional)
        self.head = head
        patches = pipeline.model.patches
        self.row = patches[-1] if patches else 0
        """Tokens a byte-level row predicts (0: one stage, whose rows are never skipped)."""
        self.thinning = head if self.row > 1 and isinstance(head, ThinningHead) else None
        """The head, where it thins training weights and the model can skip rows; else None."""
        self.cache = FieldCache()
        # checked once: an isinstance test against a runtime Protocol took 0.05 ms, per field per sample
        offered = {name: codec for name, codec in self.codecs.items() if isinstance(codec, Augmenting)}
        self.following = [name for name, codec in offered.items() if augment_setting(codec) is None]
        """Fields that vary in training as the run decides (``data.augment``): their codec leaves it open."""
        run_varies = bool(pipeline.data.augment)
        self.varying: dict[str, Augmenting] = {
            name: codec for name, codec in offered.items() if varies(codec, run_varies)
        }
        """The fields whose training encodings vary (``Augmenting``, augmentation on)."""
        self.context_weights = {name: context_weight_of(codec) for name, codec in self.codecs.items()}
        self.plugins = {
            name: components.get("codecs", ref.type).plugin for name, ref in pipeline.fields.items()
        }
        """The plugin that registered each field's codec, to name when its code ends the run."""

    def encode(self, raw: RawSample, augment: np.random.Generator | None = None) -> EncodedSample:
        """``augment``: a training sample, to be varied by the codecs that can (``Augmenting``)."""
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
            return self.thinning.training_weights(sample, augment, self.row)
        return self.head.token_weights(sample)


def context_weight_of(codec: Codec) -> float | None:
    """The codec's context weight (``ContextWeighting``), checked once: a loss weight outside [0, 1] would
    train silently wrong, so a plugin that offers one is named and refused."""
    if not isinstance(codec, ContextWeighting) or codec.context_weight is None:
        return None
    weight = codec.context_weight
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1:
        raise PluginError(f"codec '{codec.name}': context_weight must be a number in [0, 1], got {weight!r}")
    return float(weight)


def augment_setting(codec: Augmenting) -> bool | None:
    """The codec's own ``augment``: true varies every training sample, false none, None (or no such
    attribute) leaves it to the run's ``data.augment``."""
    setting = getattr(codec, "augment", None)
    return None if setting is None else bool(setting)


def varies(codec: Augmenting, run_varies: bool) -> bool:
    """Whether ``encode_augmented`` is called for this codec's training samples: its own ``augment``
    where it sets one, else the run's. A field that does not vary is encoded once and kept
    (``FieldCache``); one that does is encoded afresh every time."""
    setting = augment_setting(codec)
    return run_varies if setting is None else setting
