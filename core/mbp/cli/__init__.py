"""The ``mbp`` command. Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.

``--json`` output goes to stdout as one JSON document; human output and warnings go to stderr.
Tracebacks appear only with ``--debug``. Commands live in their own small modules.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import click

from mbp import __version__
from mbp.errors import MbpError

_debug = False


class MbpGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except MbpError as error:
            if _debug:
                traceback.print_exc()
            for problem in str(error).splitlines() or [type(error).__name__]:  # a config lists them all
                click.echo(f"mbp: error: {problem}", err=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            click.echo("mbp: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            # the reader went away (`mbp plugins | head`): nothing left to say, and nothing to flush
            # into the closed pipe at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except Exception as error:
            if _debug:
                traceback.print_exc()
            message = " ".join(f"{type(error).__name__}: {error}".split())
            click.echo(f"mbp: error: {message} (run with --debug for a traceback)", err=True)
            sys.exit(1)


@click.group(cls=MbpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mbp")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def cli(debug: bool) -> None:
    """mbp: multimodal byte modeling with multiscale decoders and plugins."""
    global _debug
    _debug = debug


def _register_commands() -> None:
    from mbp.cli import generate_cmd, import_cmd, plugins_cmd, run_cmd, shards_cmd, validate_cmd

    for module in (plugins_cmd, validate_cmd, shards_cmd, run_cmd, generate_cmd, import_cmd):
        for command in module.COMMANDS:
            cli.add_command(command)


_register_commands()


def main() -> None:
    cli(prog_name="mbp")
