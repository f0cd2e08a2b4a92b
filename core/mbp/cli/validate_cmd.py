"""``mbp validate`` and ``mbp schema``."""

from __future__ import annotations

import click

from mbp.cli.common import emit_json, say
from mbp.components import KINDS
from mbp.config import Pipeline, check_pipeline, load_registry
from mbp.plugins import get_platform


@click.command("validate")
@click.argument("registry", required=False, type=click.Path(dir_okay=False))
def validate_command(registry: str | None) -> None:
    """Check a registry file (default: the active one) against the installed plugins, and build each
    pipeline's model shapes (no weights, no training): every problem is listed, one a line."""
    from mbp.errors import ConfigError
    from mbp.resolve import build_problems

    loaded = load_registry(registry)
    components = get_platform().components
    problems = []
    for name in loaded.parsed.pipelines:
        try:
            check_pipeline(loaded, name, components)
        except ConfigError as error:
            problems.append(str(error))
            continue  # a pipeline with unknown components cannot be built
        problems += build_problems(loaded, name, components)
    if problems:
        raise ConfigError("\n".join(problems))
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
