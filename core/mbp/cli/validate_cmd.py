"""``mbp validate`` and ``mbp schema``."""

from __future__ import annotations

import click

from mbp.cli.common import emit_json, say
from mbp.components import KINDS
from mbp.config import Pipeline, check_registry, load_registry
from mbp.plugins import get_platform


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
def schema_command() -> None:
    """Print the JSON schema of every registered component and of a pipeline."""
    components = get_platform().components
    document: dict = {"pipeline": Pipeline.model_json_schema()}
    for kind in KINDS:
        document[kind] = {
            name: {"plugin": comp.plugin, "params": comp.params.model_json_schema()}
            for name, comp in sorted(components.entries[kind].items())
        }
    emit_json(document)


COMMANDS = [validate_command, schema_command]
