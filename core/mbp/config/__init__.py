"""registry.yaml: pipelines that wire registered component names together.

Validation runs in two passes. Pass one checks the shape of the file and of every reference
``{type: <registered name>, ...params}`` (``schema``, read by ``registry_file`` with each key's line,
``yamlpos``). Pass two checks each reference's parameters against the registering plugin's own pydantic
model (``checks``). Errors carry the file, line and dotted path, and list valid names. Nothing named in
a config is ever imported: names resolve only through the component table.
"""

from __future__ import annotations

from mbp.config.checks import check_pipeline, check_ref, check_registry, refs_of
from mbp.config.registry_file import (
    Registry,
    default_registry_path,
    format_validation,
    load_registry,
    parse_registry,
)
from mbp.config.schema import (
    Count,
    DataConfig,
    ModelConfig,
    Pipeline,
    Rate,
    Ref,
    RegistryFile,
    StageConfig,
    Strict,
    TrainConfig,
    settled_batch_size,
    settled_seq_len,
)

__all__ = [
    "Count",
    "DataConfig",
    "ModelConfig",
    "Pipeline",
    "Rate",
    "Ref",
    "Registry",
    "RegistryFile",
    "StageConfig",
    "Strict",
    "TrainConfig",
    "check_pipeline",
    "check_ref",
    "check_registry",
    "default_registry_path",
    "format_validation",
    "load_registry",
    "parse_registry",
    "refs_of",
    "settled_batch_size",
    "settled_seq_len",
]
