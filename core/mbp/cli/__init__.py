"""The ``mbp`` command. Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.

``--json`` output goes to stdout as one JSON document; human output and warnings go to stderr.
Tracebacks appear only with ``--debug`` (given before or after the command). Commands live in their own
small modules.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from typing import Any, NoReturn, TextIO

import click

from mbp import __version__
from mbp.cli.common import DEBUG_HELP, add_debug_option, debugging, set_debug
from mbp.errors import MbpError, stderr_line, warn
from mbp.interrupts import Terminated, from_user, telling_user_interrupts, what_it_did

HINT = "(run with --debug for a traceback)"


class MbpGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        with telling_user_interrupts():
            try:
                return super().invoke(ctx)
            except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
                raise
            except MbpError as error:
                _traceback()
                for problem in str(error).splitlines() or [type(error).__name__]:  # a config lists them all
                    click.echo(f"mbp: error: {problem}", err=True)
                sys.exit(error.exit_code)
            except BrokenPipeError:
                # the reader went away (`mbp plugins | head`): nothing left to say, and nothing to flush
                # into the closed pipe at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(141)
            except (SystemExit, KeyboardInterrupt) as error:
                if isinstance(error, Terminated):
                    click.echo("mbp: terminated (SIGTERM)", err=True)
                    sys.exit(error.code)
                if from_user(error):
                    click.echo("mbp: interrupted", err=True)
                    sys.exit(130)
                _ended_by_code(error)
            except Exception as error:
                _traceback()
                message = " ".join(f"{type(error).__name__}: {error}".split())
                click.echo(f"mbp: error: {message} {HINT}", err=True)
                sys.exit(1)


def _traceback() -> None:
    if debugging():
        traceback.print_exc()


def _ended_by_code(error: BaseException) -> NoReturn:
    """``sys.exit`` or ``KeyboardInterrupt`` from code a command ran (mbp itself calls neither inside a
    command): a plugin's, named from the traceback. A silent exit with the plugin's code would read as
    the command's own verdict."""
    from mbp.plugins import blame

    _traceback()
    who = blame(error) or "code outside mbp"
    click.echo(f"mbp: error: {who} {what_it_did(error)} {HINT}", err=True)
    sys.exit(1)


@click.group(cls=MbpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mbp")
@click.option("--debug", is_flag=True, help=DEBUG_HELP)
def cli(debug: bool) -> None:
    """mbp: multimodal byte modeling with multiscale decoders and plugins."""
    set_debug(debug)
    if not getattr(warnings.showwarning, "one_line", False):  # once, however often the group runs
        warnings.showwarning = _plugin_warnings_in_one_line(warnings.showwarning)


def _plugin_warnings_in_one_line(show: Any) -> Any:
    """``warnings.showwarning`` that says a plugin's deprecation as one ``mbp: warning:`` line, as every
    other warning of the command reads; other warnings as ``show`` does."""

    def shown(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        from mbp.traits import PluginDeprecationWarning

        if issubclass(category, PluginDeprecationWarning):
            warn(str(message))
        else:
            show(message, category, filename, lineno, file, line)

    shown.one_line = True  # type: ignore[attr-defined]
    return shown


def _register_commands() -> None:
    from mbp.cli import generate_cmd, import_cmd, plugins_cmd, run_cmd, shards_cmd, validate_cmd

    for module in (plugins_cmd, validate_cmd, shards_cmd, run_cmd, generate_cmd, import_cmd):
        for command in module.COMMANDS:
            cli.add_command(add_debug_option(command))


_register_commands()


def main() -> None:
    try:
        cli(prog_name="mbp")
    except SystemExit as ended:
        if _joined_a_process_group():
            _end_now(ended.code)
        raise


def _joined_a_process_group() -> bool:
    distributed = sys.modules.get("mbp.train.distributed")  # only a run that imported it can have joined
    return distributed is not None and bool(distributed.joined_a_process_group())


def _end_now(code: object) -> NoReturn:
    """Exit with ``code`` without Python's finalization, once every file is closed and the output is
    flushed (see ``mbp.train.distributed.joined_a_process_group`` for why)."""
    if code is not None and not isinstance(code, int):
        stderr_line(str(code))
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
