"""Where a shard's bytes come from: a local file, an ``http://`` or ``https://`` URL, or the output of a
shell command (``pipe:COMMAND``, as webdataset writes it: ``pipe:aws s3 cp s3://bucket/x.tar -``).

A stream is read with the same strict reader as a local file (:mod:`mbp.data.tarscan`), so its damage is
located the same way; what the stream itself says about its end (an HTTP body shorter than its
Content-Length, a command's exit status and first line of stderr) becomes the reason given. A stream
that fails before sending a byte is a failed shard (``HTTP 404 Not Found``, ``command exited with status
1: ...``); one that fails later is damage after the last good sample, as a cut file is.

webdataset's own opener is not used: it fetches URLs with ``curl -f``, whose exit status 22 hides the
HTTP status, and its pipes raise on exit without the command's stderr.

A gzipped stream is copied to a temporary file and read from there as a local ``.tar.gz`` is: gzip's one
CRC covers the whole stream, and no sample is vouched for before it checked out (see tarscan), which a
stream read once could only do after its samples had already been trained on.

A command runs only when the user asked for it: a shard list from a config (``data.train_shards``) may
name ``pipe:`` only when ``MBP_ALLOW_PIPE=1`` is set (see :func:`check_source`).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import IO, Protocol, cast

from mbp.data.tarscan import CHUNK, GZIP_MAGIC, Member, ShardDamageError, members, tar_members
from mbp.errors import ConfigError

PIPE = "pipe:"
URL_PREFIXES = ("http://", "https://")
ALLOW_PIPE_VARIABLE = "MBP_ALLOW_PIPE"
HTTP_TIMEOUT = 60.0
"""Seconds a server may keep silent before its shard is named as failed, instead of stalling the run."""
TAIL_LIMIT = 1 << 20
"""The most bytes read after a streamed archive's end-of-archive marker (writers pad to 10 KiB records)
to see the stream end and learn whether it ended well; past this, the stream is closed unjudged."""
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class SourceError(Exception):
    """A stream failed before sending a byte; ``reason`` is one line naming the status."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Source(Protocol):
    """A shard's bytes as they arrive; ``problem`` says why the stream ended early, once it has."""

    received: int
    problem: str | None

    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


def is_stream(shard: str) -> bool:
    return shard.startswith(PIPE) or shard.startswith(URL_PREFIXES)


def shard_name(shard: str) -> str:
    """How messages name a shard: a file by its name, a stream as given (its URL or command)."""
    return shard if is_stream(shard) else Path(shard).name


def check_source(shard: str, origin: str | None) -> None:
    """Refuse what cannot be opened, and a command from a config the user did not allow.

    Args:
        origin: the config key the shard comes from (``data.train_shards``); None for a shard given on
            the command line or to the Python API, whose commands run.

    Raises:
        ConfigError: an unknown URL scheme, or ``pipe:`` from a config without ``MBP_ALLOW_PIPE=1``.
    """
    if shard.startswith(PIPE):
        if origin is not None and os.environ.get(ALLOW_PIPE_VARIABLE, "").strip() != "1":
            raise ConfigError(
                f"{origin} names {shard}, a command: a config runs no command; pass the shard on the "
                f"command line, or set {ALLOW_PIPE_VARIABLE}=1 to allow it"
            )
    elif _SCHEME.match(shard) and not shard.startswith(URL_PREFIXES):
        raise ConfigError(
            f"shard {shard}: mbp reads local paths, http(s):// URLs and pipe:COMMAND; fetch it with a "
            "command, as in pipe:aws s3 cp s3://bucket/x.tar -"
        )


def shard_members(shard: str, limit: int) -> Generator[Member, None, None]:
    """The file members of ``shard``, local or streamed (see :func:`mbp.data.tarscan.members`).

    Raises:
        OSError: a local file cannot be opened.
        SourceError: a stream failed before sending a byte.
        ShardDamageError: the archive or its stream is cut short or corrupt.
    """
    if not is_stream(shard):
        yield from members(shard, limit)
        return
    source = _open(shard)
    try:
        head = source.read(len(GZIP_MAGIC))  # a buffered read: short only at the stream's end
        if head == GZIP_MAGIC:
            with _spooled(head, source) as path:
                end = yield from _blamed(members(path, limit), source)
        else:
            end = yield from _blamed(tar_members(_Prefixed(head, source), limit), source)
            _drain(source)
        if source.problem is not None:  # the archive ended properly: only the stream's end failed
            raise ShardDamageError(end, source.problem, whole=True)
    finally:
        source.close()


def _blamed(found: Generator[Member, None, int], source: Source) -> Generator[Member, None, int]:
    """``found``, with damage blamed on the stream when the stream says why it ended."""
    try:
        return (yield from found)
    except ShardDamageError as damage:
        if source.problem is None:
            raise
        if source.received == 0:
            raise SourceError(source.problem) from None
        raise ShardDamageError(damage.offset, source.problem, damage.member, whole=damage.whole) from None


@contextmanager
def _spooled(head: bytes, source: Source) -> Iterator[str]:
    """The whole stream in a temporary file, removed afterwards; a CHUNK in memory at a time."""
    with tempfile.NamedTemporaryFile(prefix="mbp-shard-", suffix=".tar.gz") as spool:
        spool.write(head)
        while chunk := source.read(CHUNK):
            spool.write(chunk)
        spool.flush()
        yield spool.name


def _drain(source: Source) -> None:
    """Read what follows the end-of-archive marker, up to ``TAIL_LIMIT``, to learn how the stream ends."""
    left = TAIL_LIMIT
    while left > 0 and (part := source.read(min(left, CHUNK))):
        left -= len(part)


class _Prefixed:
    """``head`` (bytes already read to tell tar from gzip) and then the rest of ``source``."""

    def __init__(self, head: bytes, source: Source) -> None:
        self._head, self._source = head, source

    def read(self, size: int, /) -> bytes:
        if not self._head:
            return self._source.read(size)
        out, self._head = self._head[:size], self._head[size:]
        return out + self._source.read(size - len(out)) if len(out) < size else out


def _open(shard: str) -> Source:
    return _PipeSource(shard[len(PIPE) :]) if shard.startswith(PIPE) else _HttpSource(shard)


class _HttpSource:
    """An HTTP(S) body; a body shorter than its Content-Length or a failed transfer is a ``problem``."""

    def __init__(self, url: str) -> None:
        self.received = 0
        self.problem: str | None = None
        try:
            self._response = urllib.request.urlopen(url, timeout=HTTP_TIMEOUT)
        except urllib.error.HTTPError as error:
            raise SourceError(f"HTTP {error.code} {_phrase(error.code) or error.reason}") from None
        except urllib.error.URLError as error:
            reason = error.reason
            text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
            raise SourceError(f"cannot connect: {text}") from None
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise SourceError(f"cannot open: {error}") from None
        self._expected: int | None = self._response.length

    def read(self, size: int, /) -> bytes:
        if self.problem is not None:
            return b""
        try:
            data = cast(bytes, self._response.read(size))
        except (OSError, http.client.HTTPException) as error:
            reason = str(error) or type(error).__name__
            self.problem = f"HTTP transfer failed after {self.received} bytes: {reason}"
            return b""
        self.received += len(data)
        if not data and size and self._expected is not None and self.received < self._expected:
            self.problem = f"HTTP body cut short ({self.received} of {self._expected} bytes arrived)"
        return data

    def close(self) -> None:
        self._response.close()


class _PipeSource:
    """The standard output of ``command`` run by the shell; at its end, an exit status other than 0 is a
    ``problem`` naming the status and the first line the command wrote to stderr."""

    def __init__(self, command: str) -> None:
        self.received = 0
        self.problem: str | None = None
        # a file, not a pipe: a chatty command never blocks on it; closed by close()
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115
        # its own process group: closing early stops the whole pipeline the shell started
        self._process = subprocess.Popen(  # shell=True: a command the user gave (see check_source)
            command,
            shell=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            start_new_session=True,
        )
        self._output = cast(IO[bytes], self._process.stdout)

    def read(self, size: int, /) -> bytes:
        data = self._output.read(size)
        self.received += len(data)
        if not data and size and self.problem is None:
            status = self._process.wait()
            if status != 0:
                self.problem = f"command {_ended(status)}{self._first_error()}"
        return data

    def _first_error(self) -> str:
        self._errors.seek(0)
        lines = self._errors.read(4096).decode("utf-8", "replace").splitlines()
        first = next((line.strip() for line in lines if line.strip()), "")
        return f": {first}" if first else ""

    def close(self) -> None:
        self._output.close()
        if self._process.poll() is None:  # closed before its end: stop it, its status means nothing
            _stop(self._process)
        self._errors.close()


def _ended(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End the process group of ``process``: politely, then for good after a few seconds."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
    process.wait()


def _phrase(code: int) -> str | None:
    """The standard reason phrase (``Not Found``): what a server sends may be anything."""
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return None
