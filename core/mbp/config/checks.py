"""Pass two of validation: every component reference of a pipeline names a registered component, and its
parameters fit that component's own pydantic model. Names resolve only through the component table:
nothing named in a config is ever imported."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError

from mbp.components import ComponentTable, Kind
from mbp.config.registry_file import Registry
from mbp.config.schema import Pipeline, Ref
from mbp.errors import ConfigError


def refs_of(pipeline: Pipeline) -> list[tuple[Kind, tuple[str | int, ...], Ref]]:
    """Every component reference in a pipeline, with its kind and path inside the pipeline."""
    refs: list[tuple[Kind, tuple[str | int, ...], Ref]] = [
        ("codecs", ("fields", field), ref) for field, ref in pipeline.fields.items()
    ]
    refs.append(("heads", ("head",), pipeline.head))
    refs += [
        ("backbones", ("model", "stages", i, "backbone"), stage.backbone)
        for i, stage in enumerate(pipeline.model.stages)
    ]
    refs += [("sinks", ("train", "sinks", i), ref) for i, ref in enumerate(pipeline.train.sinks or [])]
    return refs


def check_pipeline(registry: Registry, name: str, components: ComponentTable) -> None:
    """Pass two: every reference names a registered component and its parameters fit that component.
    Raises one ConfigError listing every bad reference, one a line."""
    pipeline = registry.pipeline(name)
    problems = []
    for kind, path, ref in refs_of(pipeline):
        full = ("pipelines", name, *path)
        try:
            check_ref(kind, ref, components, registry.where(full), ".".join(map(str, full)))
        except ConfigError as error:
            problems.append(str(error))
    if problems:
        raise ConfigError("\n".join(problems))


def check_ref(kind: Kind, ref: Ref, components: ComponentTable, where: str, dotted: str) -> None:
    if ref.type in components.clashes[kind]:
        raise ConfigError(f"{where}: {dotted}.type: {components.clashes[kind][ref.type]}")
    names = components.names(kind)
    if ref.type not in names:
        valid = ", ".join(names) or "none registered"
        raise ConfigError(
            f"{where}: {dotted}.type: unknown {kind[:-1]} '{ref.type}' (valid: {valid}); "
            f"{components.explain_missing(kind, ref.type)}"
        )
    component = components.get(kind, ref.type)
    params = {k: v for k, v in ref.as_dict().items() if k != "type"}
    try:
        component.params.model_validate(params)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            valid = ", ".join(component.params.model_fields) or "none"
            raise ConfigError(
                f"{where}: {dotted}.{key}: unknown parameter of {kind[:-1]} '{ref.type}' (valid: {valid})"
            ) from None
        raise ConfigError(f"{where}: {dotted}.{key}: {first['msg']}") from None


def check_registry(
    registry: Registry,
    components: ComponentTable,
    then: Callable[[Registry, str, ComponentTable], list[str]] | None = None,
) -> None:
    """Pass two for every pipeline, and ``then`` (more checks, returning problems) for each pipeline
    that passes it; one ConfigError lists the problems of all of them."""
    problems = []
    for name in registry.parsed.pipelines:
        try:
            check_pipeline(registry, name, components)
        except ConfigError as error:
            problems.append(str(error))
            continue  # a pipeline with unknown components cannot be checked further
        if then is not None:
            problems += then(registry, name, components)
    if problems:
        raise ConfigError("\n".join(problems))
