"""Helpers shared by commands."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

registry_option = click.option(
    "--registry",
    "registry_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Registry file (default: the registry.yaml shipped with mbp).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document to stdout.")

DEBUG_HELP = "Show tracebacks on errors."
_debug = {"on": False}


def debugging() -> bool:
    """Whether this invocation asked for tracebacks (``--debug`` before or after the command)."""
    return _debug["on"]


def set_debug(on: bool) -> None:
    _debug["on"] = on


def _debug_given(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        set_debug(True)


def add_debug_option(command: click.Command) -> click.Command:
    """Give ``command`` its own ``--debug``, so that ``mbp run --debug`` works like ``mbp --debug run``
    (an error's line tells the user to run with ``--debug`` and must not name a flag that is refused).
    A group's commands get it too (``mbp shards inspect ... --debug``)."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_debug_option(sub)
    if not any(param.name == "debug" for param in command.params):
        command.params.append(
            click.Option(
                ["--debug"],
                is_flag=True,
                expose_value=False,
                is_eager=True,
                callback=_debug_given,
                help=DEBUG_HELP,
            )
        )
    return command


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def say(message: str) -> None:
    click.echo(message, err=True)
