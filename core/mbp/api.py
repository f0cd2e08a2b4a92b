"""Everything a plugin author needs from mbp, in one import; the rest of core is internal and may move.

- Hooks: ``hookimpl``, ``Register`` and ``RegisterImporter``; a plugin implements
  ``mbp_register_codecs(register: Register[Codec])``, ``mbp_register_backbones(register:
  Register[Backbone])``, ``mbp_register_heads(register: Register[TaskHead])``,
  ``mbp_register_sinks(register: Register[MetricsSink])`` or ``mbp_register_importers(register:
  RegisterImporter)`` (see :mod:`mbp.hookspecs`), and mypy then checks what it registers against the
  protocols below.
- Codecs: ``Codec`` turning field bytes into a ``Segment`` and back, with what it declares about itself
  in one ``CodecTraits`` value (its ``traits``: context weight, augmentation, rows, reading view,
  per-segment extension), read once when a pipeline is resolved.
- Backbones: ``Backbone`` (optionally ``PrefillBackbone``, ``SegmentedBackbone``) and its ``Cache``;
  test one with :mod:`mbp.testing`. A KV cache plans each generation step's row positions and visibility
  with a ``KVPlanner`` (its ``KVPlan`` writes the new keys and values); ``small_attention`` says when that
  step's attention runs as a broadcast product. ``RMSNorm`` and :mod:`small_tensor_ops` are the norm and
  the ops for the tiny tensors of generation steps that the built-in backbones use; ``Dropout`` (and
  ``dropout``) is their dropout, with a CPU mask several times cheaper than torch's.
- Task heads: ``TaskHead`` and its ``Metrics``, reading ``EncodedSample``s, with the training defaults
  its task sets in one ``HeadDefaults`` value (its ``defaults``: answered field, rows a step, dropout,
  splitting, context thinning, the metric that picks the best checkpoint); ``payload_range``,
  ``payload_bytes`` and ``prompt_length`` find a field's payload in a sample.
- Deprecated for one release: the optional protocols ``SegmentExtension``, ``Augmenting``,
  ``ReadingView``, ``ContextWeighting``, ``RowLayout``, ``FieldHead``, ``BatchingHead``,
  ``RegularizedHead``, ``SplittingHead`` and ``ThinningHead``. A plugin written against them is read
  into the equivalent traits or defaults, with one ``PluginDeprecationWarning`` naming them.
- Metrics sinks (``mbp_register_sinks``): ``MetricsSink`` (``write(row)`` per metric row, ``close()``);
  a sink whose library is missing raises ``SinkUnavailableError``.
- Importers (``mbp_register_importers``): a ``click.Command`` each, registered through
  ``RegisterImporter``, that writes ordinary mbp checkpoints from another tool's: the model's
  ``ModelConfig`` and ``Pipeline``, ``build_model``, ``MultiscaleDecoder``, ``save_model``,
  ``load_components`` (the installed plugins' component table) and the vocabulary's ``PAD`` and
  ``VOCAB_SIZE``; ``CheckpointError`` for files that cannot be read. ``refuse_unsafe_output`` refuses an
  output folder that is or holds the working directory or an input; ``write_file_atomically`` writes a
  file beside the checkpoint.
- Errors a plugin raises: ``CodecError`` for a bad value or segment (the sample is skipped and counted),
  ``ConfigError`` for parameters that cannot work together, ``DataError`` for an unusable sample.
"""

from __future__ import annotations

from mbp.atomic import write_file_atomically
from mbp.boundaries import BoundaryRule, FixedLength, WordStarts
from mbp.codec import Codec, CodecTraits
from mbp.components import ComponentTable
from mbp.config import ModelConfig, Pipeline
from mbp.errors import CheckpointError, CodecError, ConfigError, DataError, MbpError, PluginError
from mbp.heads import HeadDefaults, Metrics, TaskHead
from mbp.hookspecs import Register, RegisterImporter, hookimpl
from mbp.legacy_protocols import (
    Augmenting,
    BatchingHead,
    ContextWeighting,
    FieldHead,
    ReadingView,
    RegularizedHead,
    RowLayout,
    SegmentExtension,
    SplittingHead,
    ThinningHead,
)
from mbp.model import small_tensor_ops
from mbp.model.backbone import Backbone, Cache, PrefillBackbone, SegmentedBackbone
from mbp.model.build import build_model
from mbp.model.checkpoint_files import save_model
from mbp.model.decoder import MultiscaleDecoder
from mbp.model.dropout import Dropout, dropout
from mbp.model.kv_plan import KVPlan, KVPlanner, small_attention
from mbp.model.norm import RMSNorm
from mbp.outdir import refuse_unsafe_output
from mbp.plugins import get_platform
from mbp.protocol import PAD, VOCAB_SIZE, Segment
from mbp.sample import EncodedSample, Span, payload_bytes, payload_range, prompt_length
from mbp.sinks import MetricsSink, SinkUnavailableError
from mbp.traits import PluginDeprecationWarning


def load_components() -> ComponentTable:
    """The component table of the installed plugins (what an importer builds a model from)."""
    return get_platform().components


__all__ = [
    "PAD",
    "VOCAB_SIZE",
    "Augmenting",
    "Backbone",
    "BatchingHead",
    "BoundaryRule",
    "Cache",
    "CheckpointError",
    "Codec",
    "CodecError",
    "CodecTraits",
    "ConfigError",
    "ContextWeighting",
    "DataError",
    "Dropout",
    "EncodedSample",
    "FieldHead",
    "FixedLength",
    "HeadDefaults",
    "KVPlan",
    "KVPlanner",
    "MbpError",
    "Metrics",
    "MetricsSink",
    "ModelConfig",
    "MultiscaleDecoder",
    "Pipeline",
    "PluginDeprecationWarning",
    "PluginError",
    "PrefillBackbone",
    "RMSNorm",
    "ReadingView",
    "Register",
    "RegisterImporter",
    "RegularizedHead",
    "RowLayout",
    "Segment",
    "SegmentExtension",
    "SegmentedBackbone",
    "SinkUnavailableError",
    "Span",
    "SplittingHead",
    "TaskHead",
    "ThinningHead",
    "WordStarts",
    "build_model",
    "dropout",
    "hookimpl",
    "load_components",
    "payload_bytes",
    "payload_range",
    "prompt_length",
    "refuse_unsafe_output",
    "save_model",
    "small_attention",
    "small_tensor_ops",
    "write_file_atomically",
]
