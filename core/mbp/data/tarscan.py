"""Strict reading of tar and tar.gz shards: every member checked, damage located, never a silent stop.

Python's tarfile (and webdataset on top of it) ends a streamed archive at the first header it cannot
parse, so a cut or corrupt shard reads as a complete, shorter one. Here a member counts only when its
header checksum is valid and all of its data is there; an archive must end with the two zero blocks of
its end-of-archive marker; a gzip stream must end with a trailer whose CRC and length match.

gzip has one CRC for the whole stream, and a flipped bit can inflate to different bytes without any
error, so nothing read from a gzip stream is trusted before its trailer checked out. A stream that is
merely cut short is still usable up to the cut: inflating a prefix gives a prefix of the true output.
A ``.tar.gz`` shard is therefore inflated twice, once to check it and once to read it: holding its
inflated bytes between the two instead would take as much memory as the shard inflates to.

Memory is bounded by a limit, never by what a shard claims: inflating and reading go a ``CHUNK`` at a
time, and the data of a member larger than the limit is passed over without being held.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

BLOCK = 512
CHUNK = 1 << 20
"""The most bytes read, or inflated, at once."""
_META_LIMIT = 1 << 20
"""The most bytes a long-name or pax header's data may hold (real ones hold a few hundred)."""
GZIP_MAGIC = b"\x1f\x8b"
_ZERO_BLOCK = bytes(BLOCK)
# types whose data is a file: regular, its old spelling, contiguous
_FILE_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE}
_NO_DATA_TYPES = {
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.DIRTYPE,
    tarfile.FIFOTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
}


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class ShardDamageError(Exception):
    """Where a shard stops being readable, in bytes of its tar stream (decompressed for tar.gz).

    ``member`` is the name in the damaged header when that header itself was intact (its data is cut).
    """

    def __init__(self, offset: int, reason: str, member: str | None = None, *, whole: bool = False) -> None:
        super().__init__(f"offset {offset}: {reason}")
        self.offset, self.reason, self.member = offset, reason, member
        self.whole = whole
        """The tar archive itself ended properly: every member was read (only its container is cut)."""


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes | None
    """None when ``size`` is over the reader's limit: the data was passed over, never held."""
    offset: int
    """Offset of the member's header in the tar stream."""
    size: int
    """Bytes of data, as its header gives them (all of them were there: a cut member is damage)."""


@dataclass(frozen=True)
class GzipCheck:
    """The result of inflating a whole gzip file once: ``length`` bytes came out before ``problem``."""

    length: int
    problem: str | None = None
    corrupt: bool = False
    """True when the bytes that came out cannot be trusted (bad data or trailer), not merely cut short."""


def members(path: str | Path, limit: int) -> Generator[Member, None, int]:
    """The file members of the tar or tar.gz shard at ``path``, in order; the data of those over
    ``limit`` bytes is left out (``Member.data`` is None). Returns where the tar archive ends.

    Raises:
        OSError: the file cannot be opened.
        ShardDamageError: the archive is cut short or corrupt; every member yielded before is intact.
    """
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == GZIP_MAGIC
    if not gzipped:
        with open(path, "rb") as handle:
            return (yield from tar_members(handle, limit))
    check = check_gzip(path)
    if check.corrupt:
        raise ShardDamageError(0, f"{check.problem}; no sample of a corrupt gzip stream can be vouched for")
    reader = _Inflated(path, check.length)
    try:
        end = yield from tar_members(reader, limit)
    except ShardDamageError as damage:
        if check.problem:  # name the real cause: the tar stream ends where the gzip stream was cut
            raise ShardDamageError(damage.offset, check.problem, damage.member) from None
        raise
    if check.problem:  # cut after the end-of-archive marker: all samples are there, the file is not
        raise ShardDamageError(end, check.problem, whole=True)
    return end


def tar_members(stream: Readable, limit: int) -> Generator[Member, None, int]:
    """Members of an uncompressed tar stream (see :func:`members`); returns where the archive ends."""
    offset = 0
    long_name: str | None = None  # from a GNU 'L' or a pax 'x' header, for the member that follows
    pax_size: int | None = None
    while True:
        info = _header(stream, offset)
        if info is None:
            return offset + 2 * BLOCK
        name = long_name if long_name is not None else info.name
        size = pax_size if pax_size is not None else info.size
        if info.type in _NO_DATA_TYPES:
            size = 0  # as tarfile does: these carry no data whatever their size field says
        if size < 0:  # a base-256 size field or a pax record can hold one
            raise ShardDamageError(offset, f"invalid header (member {name} claims {size} bytes)", name)
        kept = info.type in _FILE_TYPES and size <= limit
        kept = kept or (info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE) and size <= _META_LIMIT)
        data = _read(stream, size) if kept else None
        got = len(data) if data is not None else _pass_over(stream, size)
        if got < size:
            raise ShardDamageError(offset, f"member {name} cut short ({got} of {size} bytes)", name)
        padding = -size % BLOCK
        if len(_read(stream, padding)) < padding:
            raise ShardDamageError(offset, f"file ends inside the padding of member {name}", name)
        if info.type == tarfile.GNUTYPE_LONGNAME:
            long_name = (
                _meta(data, offset, "long name").rstrip(b"\0").decode(tarfile.ENCODING, "surrogateescape")
            )
        elif info.type == tarfile.XHDTYPE:
            long_name, pax_size = _pax(_meta(data, offset, "pax extended"), offset, long_name, pax_size)
        elif info.type != tarfile.XGLTYPE:  # global pax defaults: nothing a sample reader uses
            if info.type in _FILE_TYPES:
                yield Member(name, data, offset, size)
            long_name, pax_size = None, None
        offset += BLOCK + size + padding


def _header(stream: Readable, offset: int) -> tarfile.TarInfo | None:
    """The header at ``offset``, or None at the end-of-archive marker."""
    header = _read(stream, BLOCK)
    if len(header) < BLOCK:
        where = "inside a header" if header else "without the end-of-archive marker"
        raise ShardDamageError(offset, f"file ends {where}")
    if header == _ZERO_BLOCK:
        if _read(stream, BLOCK) != _ZERO_BLOCK:
            raise ShardDamageError(offset, "end-of-archive marker is not two zero blocks")
        return None
    try:
        return tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError as error:
        problem = "invalid header" + ("" if str(error) == "invalid header" else f" ({error})")
        raise ShardDamageError(offset, "not a tar archive" if offset == 0 else problem) from None


def _meta(data: bytes | None, offset: int, kind: str) -> bytes:
    """The data of a long-name or pax header; one over ``_META_LIMIT`` names nothing real."""
    if data is None:
        raise ShardDamageError(offset, f"{kind} header over {_META_LIMIT} bytes")
    return data


def _pax(data: bytes, offset: int, name: str | None, size: int | None) -> tuple[str | None, int | None]:
    """``path`` and ``size`` from pax records (``LEN key=value\\n``)."""
    pos = 0
    while pos < len(data) and data[pos] != 0:
        length_text, _, _ = data[pos : pos + 20].partition(b" ")
        try:
            length = int(length_text)
            key, _, value = data[pos + len(length_text) + 1 : pos + length - 1].partition(b"=")
        except ValueError:
            raise ShardDamageError(offset, "invalid pax extended header") from None
        if length <= 0:
            raise ShardDamageError(offset, "invalid pax extended header")
        if key == b"path":
            name = value.decode("utf-8", "surrogateescape")
        elif key == b"size":
            try:
                size = int(value)
            except ValueError:
                raise ShardDamageError(offset, "invalid size in pax extended header") from None
        pos += length
    return name, size


def _read(stream: Readable, size: int) -> bytes:
    """Up to ``size`` bytes; fewer only at the end of the stream. Read a ``CHUNK`` at a time: a read
    of the size a header claims would allocate all of it before finding the file shorter. Gathered in
    a BytesIO, whose value is its own buffer: joining a list of parts would hold the data twice."""
    first = stream.read(min(size, CHUNK)) if size else b""
    if len(first) == size or not first:
        return first
    gathered, left = io.BytesIO(first), size - len(first)
    gathered.seek(0, io.SEEK_END)
    while left > 0:
        part = stream.read(min(left, CHUNK))
        if not part:
            break
        gathered.write(part)
        left -= len(part)
    return gathered.getvalue()


def _pass_over(stream: Readable, size: int) -> int:
    """Read and drop up to ``size`` bytes a ``CHUNK`` at a time; how many there were."""
    got = 0
    while got < size:
        part = stream.read(min(size - got, CHUNK))
        if not part:
            break
        got += len(part)
    return got


def _inflate(path: str | Path) -> Iterator[bytes]:
    """Inflate every gzip member of ``path``; raises zlib.error on corrupt data or trailer, and
    EOFError (after yielding what came out) when the file ends inside a member."""
    with open(path, "rb") as handle:
        inflater = zlib.decompressobj(wbits=31)  # 31: gzip framing, CRC and length checked by zlib
        fed = False
        while True:
            chunk = handle.read(CHUNK)
            if not chunk:
                break
            while chunk:
                fed = True
                out = inflater.decompress(chunk, CHUNK)  # bounded: a MiB of zeros inflates a thousandfold
                if out:
                    yield out
                if not inflater.eof:
                    chunk = inflater.unconsumed_tail
                    continue
                chunk = inflater.unused_data
                if chunk.strip(b"\0"):  # another gzip member follows (as `cat a.gz b.gz` makes)
                    inflater, fed = zlib.decompressobj(wbits=31), False
                else:
                    chunk = b""  # zero padding after the last member is what some writers add
        tail = inflater.flush()
        if tail:
            yield tail
        if fed and not inflater.eof:
            raise EOFError


def check_gzip(path: str | Path) -> GzipCheck:
    """Inflate all of ``path`` once and say how much of it can be used."""
    length = 0
    try:
        for out in _inflate(path):
            length += len(out)
        return GzipCheck(length)
    except EOFError:
        size = Path(path).stat().st_size
        return GzipCheck(length, f"gzip stream cut short (the file ends at byte {size})")
    except zlib.error as error:
        return GzipCheck(length, f"corrupt gzip data ({error})", corrupt=True)


class _Inflated:
    """A read-only stream of the first ``limit`` inflated bytes of a gzip file (checked beforehand)."""

    def __init__(self, path: str | Path, limit: int) -> None:
        self._chunks = _inflate(path)
        self._buffer = memoryview(b"")
        self._left = limit

    def read(self, size: int, /) -> bytes:
        size = min(size, self._left)
        parts, wanted = [], size
        while wanted > 0:
            if not self._buffer:
                self._buffer = memoryview(b"")  # lets the spent chunk go before the next is inflated
                try:
                    self._buffer = memoryview(next(self._chunks))
                except (StopIteration, EOFError, zlib.error):  # checked before: the limit is below these
                    break
            part, self._buffer = self._buffer[:wanted], self._buffer[wanted:]
            parts.append(part)
            wanted -= len(part)
        out = b"".join(parts)
        self._left -= len(out)
        return out
