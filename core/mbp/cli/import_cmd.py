"""``mbp import SOURCE ...``: checkpoints of other tools become mbp checkpoints. Each source is a command
a plugin registers through ``mbp_register_importers``; plugins load only when ``import`` runs."""

from __future__ import annotations

from typing import Any

import click


def importers() -> dict[str, click.Command]:
    """Every registered importer by name; a plugin failing in the hook is reported and skipped."""
    from mbp.errors import PluginError
    from mbp.plugins import get_platform, strict

    platform = get_platform()
    found: dict[str, click.Command] = {}
    for impl in platform.pm.hook.mbp_register_importers.get_hookimpls():
        if impl.plugin_name in platform.failures:
            continue

        def register(name: str, command: Any, plugin: str = impl.plugin_name) -> None:
            if not isinstance(command, click.Command):
                raise PluginError(f"plugin '{plugin}': importer '{name}' must be a click command")
            if name in found:
                raise PluginError(f"importer '{name}' is registered by two plugins")
            found[name] = command

        try:
            impl.function(register=register)
        except Exception as error:
            message = (
                f"plugin '{impl.plugin_name}' failed to register importers: {' '.join(str(error).split())}"
            )
            if strict() or isinstance(error, PluginError):
                raise PluginError(message) from None
            click.echo(f"mbp: {message}", err=True)
    return found


class ImportGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(importers())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return importers().get(name)


@click.group("import", cls=ImportGroup)
def import_command() -> None:
    """Convert another tool's checkpoint into an mbp checkpoint: one command per source."""


COMMANDS = [import_command]
