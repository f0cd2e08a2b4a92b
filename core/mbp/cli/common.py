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


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def say(message: str) -> None:
    click.echo(message, err=True)
