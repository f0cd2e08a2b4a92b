"""``mbp validate`` and ``mbp schema``."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import click

from mbp.cli.common import emit_json, say
from mbp.components import KINDS, ComponentTable, Kind
from mbp.config import Pipeline, check_registry, load_registry
from mbp.errors import MbpError
from mbp.plugins import get_platform

if TYPE_CHECKING:
    from mbp.codec import CodecTraits


@click.command("validate")
@click.argument("registry", required=False, type=click.Path(dir_okay=False))
def validate_command(registry: str | None) -> None:
    """Check a registry file (default: the active one) against the installed plugins, and build each
    pipeline's model shapes (no weights, no training): every problem is listed, one a line."""
    from mbp.resolve import build_problems

    loaded = load_registry(registry)
    check_registry(loaded, get_platform().components, then=build_problems)
    names = ", ".join(loaded.parsed.pipelines)
    say(f"{loaded.source}: ok ({len(loaded.parsed.pipelines)} pipelines: {names})")


@click.command("schema")
@click.option("--json", "as_json", is_flag=True, help="The JSON schema of every component and of a pipeline.")
def schema_command(as_json: bool) -> None:
    """List every registered component with its parameters, each codec's traits and each head's
    defaults (as built with default parameters); ``--json``: the same with the parameters' JSON schemas,
    and a pipeline's."""
    components = get_platform().components
    document: dict[str, Any] = {"pipeline": Pipeline.model_json_schema()}
    for kind in KINDS:
        document[kind] = {
            name: {
                "plugin": comp.plugin,
                "params": comp.params.model_json_schema(),
                **declared(components, kind, name),
            }
            for name, comp in sorted(components.entries[kind].items())
        }
    if as_json:
        emit_json(document)
        return
    for kind in KINDS:
        click.echo(f"{kind}:")
        for name, entry in document[kind].items():
            click.echo("\n".join(described(name, entry)))


def described(name: str, entry: dict[str, Any]) -> list[str]:
    """One component's lines in ``mbp schema``'s listing."""
    params = ", ".join(entry["params"].get("properties", {})) or "none"
    lines = [f"  {name} (plugin {entry['plugin']}): params: {params}"]
    for key in ("traits", "reading_traits", "defaults", "declared"):
        value = entry.get(key)
        if value is not None:
            shown = value if isinstance(value, str) else ", ".join(f"{k}={v}" for k, v in value.items())
            lines.append(f"    {key.replace('_', ' ')}: {shown}")
    return lines


def declared(components: ComponentTable, kind: Kind, name: str) -> dict[str, Any]:
    """What a codec (``traits``, and ``reading_traits`` for its reading view) or a head (``defaults``)
    declares when built with default parameters; ``declared`` says why it could not be built so."""
    from mbp.traits import codec_traits, head_defaults

    if kind not in ("codecs", "heads"):
        return {}
    try:
        built = components.build(kind, {"type": name})
        if kind == "heads":
            return {"defaults": dataclasses.asdict(head_defaults(built))}
        traits = codec_traits(built)
        found = {"traits": _traits_document(traits)}
        if traits.reading_view:
            found["reading_traits"] = _traits_document(codec_traits(built.for_reading()))
        return found
    except MbpError as error:
        return {"declared": f"set by its parameters, and none builds it by default ({error})"}


def _traits_document(traits: CodecTraits) -> dict[str, Any]:
    """``traits`` as JSON: a boundary rule as its checkpoint record (``{"rule": "words", ...}``)."""
    from mbp.config.boundary_rules import rule_to_json

    document = dataclasses.asdict(traits)
    if traits.boundaries is not None:
        document["boundaries"] = rule_to_json(traits.boundaries)
    return document


COMMANDS = [validate_command, schema_command]
