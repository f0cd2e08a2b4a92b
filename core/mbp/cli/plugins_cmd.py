"""``mbp plugins``: what each plugin registered, read from the plugin manager."""

from __future__ import annotations

import click

from mbp.cli.common import emit_json, json_option
from mbp.components import KINDS
from mbp.plugins import get_platform


@click.command("plugins")
@json_option
def plugins_command(as_json: bool) -> None:
    """List plugins with their distribution, version and registered names."""
    rows = get_platform().describe()
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        failed = f": failed to load: {row['error']}" if row.get("error") else ""
        click.echo(f"{row['name']} ({row['dist']} {row['version']}){failed}")
        for kind in KINDS:
            if row[kind]:
                click.echo(f"  {kind}: {', '.join(row[kind])}")


COMMANDS = [plugins_command]
