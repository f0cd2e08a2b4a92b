"""``mbp import SOURCE ...``: checkpoints of other tools become mbp checkpoints. Each source is a command
a plugin registers through ``mbp_register_importers``; plugins load only when ``import`` runs."""

from __future__ import annotations

from typing import Any

import click

_asked: dict[int, tuple[object, dict[str, click.Command]]] = {}


def importers() -> dict[str, click.Command]:
    """Every registered importer by name; a plugin failing in the hook is reported (once: ``--help``
    asks for the list and then for each command) and skipped."""
    from mbp.plugins import get_platform

    platform = get_platform()
    if id(platform) not in _asked:
        _asked[id(platform)] = (platform, _ask(platform))  # the platform kept, so its id stays its own
    return _asked[id(platform)][1]


def _ask(platform: Any) -> dict[str, click.Command]:
    from mbp.errors import PluginError
    from mbp.interrupts import from_user, what_it_did
    from mbp.plugins import strict

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
        except BaseException as error:  # sys.exit in a plugin must not end `mbp import` silently
            if from_user(error):
                raise
            said = str(error) if isinstance(error, Exception) else what_it_did(error)
            message = f"plugin '{impl.plugin_name}' failed to register importers: {' '.join(said.split())}"
            if strict() or isinstance(error, PluginError):
                raise PluginError(message) from None
            click.echo(f"mbp: {message}", err=True)
    return found


class ImportGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(importers())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from mbp.cli.common import add_debug_option

        command = importers().get(name)
        return None if command is None else add_debug_option(command)


@click.group("import", cls=ImportGroup)
def import_command() -> None:
    """Convert another tool's checkpoint into an mbp checkpoint: one command per source."""


COMMANDS = [import_command]
