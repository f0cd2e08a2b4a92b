"""Resolving a pipeline into live objects: validated config, codecs, head, model."""

from __future__ import annotations

from dataclasses import dataclass

from mbp.components import ComponentTable
from mbp.config import Pipeline, Registry, check_pipeline, load_registry
from mbp.data.encode import SampleEncoder
from mbp.errors import ConfigError
from mbp.heads import FieldHead, TaskHead


@dataclass
class Resolved:
    registry: Registry
    name: str
    pipeline: Pipeline
    head: TaskHead
    encoder: SampleEncoder
    components: ComponentTable
    """What the pipeline's names were resolved against; the model is built from it too."""


def resolve(
    registry_path: str | None,
    name: str | None,
    pipeline: Pipeline | None = None,
    *,
    components: ComponentTable,
) -> Resolved:
    """Load and fully validate a pipeline (both passes) and build its head and encoder."""
    registry = load_registry(registry_path)
    name = name or registry.default_pipeline
    check_pipeline(registry, name, components)
    pipeline = pipeline or registry.pipeline(name)
    head: TaskHead = components.build("heads", pipeline.head.as_dict())
    target = head.field if isinstance(head, FieldHead) else None  # the segment a vqa/classify head answers
    if target is not None and target not in pipeline.fields:
        raise ConfigError(
            f"{registry.where(('pipelines', name, 'head'))}: head '{pipeline.head.type}' targets field "
            f"'{target}', which is not among the pipeline's fields ({', '.join(pipeline.fields)})"
        )
    return Resolved(registry, name, pipeline, head, SampleEncoder(pipeline, components, head), components)


def pipeline_encoder(registry_path: str | None, name: str, *, components: ComponentTable) -> SampleEncoder:
    return resolve(registry_path, name, components=components).encoder
