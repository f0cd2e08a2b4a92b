"""Every error mbp raises on bad input derives from :class:`MbpError`.

The CLI prints ``str(error)`` as one line and exits with ``error.exit_code``; a traceback is shown only
with ``--debug``. Messages name the culprit (file, location, sample, field, plugin) and what was expected.
"""

from __future__ import annotations

import sys


class MbpError(Exception):
    """Base class of errors a user can act on."""

    exit_code = 1


class ConfigError(MbpError):
    """A registry file, pipeline, reference or CLI override is wrong."""

    exit_code = 2


class PluginError(MbpError):
    """A plugin failed to load, clashed with another, or a needed plugin is missing."""

    exit_code = 2


class PluginExitError(MbpError):
    """Plugin code called ``sys.exit`` or raised ``KeyboardInterrupt`` while a command ran: the command
    cannot go on, and the message names the plugin (and the sample and field where one was at hand)."""


class NameClashError(PluginError):
    """Two plugins registered one name: ambiguous for every pipeline, so never just skipped."""


class ProtocolError(MbpError):
    """A token stream cannot be cut into segments."""


class CodecError(MbpError):
    """A codec rejected a value or a segment."""


class DataError(MbpError):
    """A shard, sample or field is unusable."""


class MissingFieldError(DataError):
    """A sample lacks a field its pipeline needs."""


def skip_kind(error: DataError) -> str:
    """How a skipped sample is counted in summaries."""
    return "missing field" if isinstance(error, MissingFieldError) else "bad field"


class CheckpointError(MbpError):
    """A checkpoint is missing, incomplete or does not match the model."""


def stderr_line(line: str) -> None:
    """Write ``line`` and its newline to stderr in one write: the processes of one run share stderr, and
    a line written in two pieces (as ``print`` writes it where stderr is unbuffered, as under torchrun)
    let another process's line in between (two warnings on one line, the second lost to a reader)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def warn(line: str) -> None:
    """``line`` on stderr as a warning: ``mbp: warning: LINE``."""
    stderr_line(f"mbp: warning: {line}")
