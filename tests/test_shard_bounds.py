"""What a shard claims does not decide how much memory reading it takes: a member over
``MBP_MAX_MEMBER_BYTES`` is passed over and named, gzip is inflated a bounded piece at a time, and a
header claiming more bytes than the file holds is damage, named, with the other shards still read."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tracemalloc
import zlib
from pathlib import Path
from typing import Literal

import pytest
from mbp.data.read import read_samples
from mbp.data.skips import SkipLog

from tests.conftest import invoke_mbp
from tests.shardkit import tar_bytes, write_tar

LIMIT = 1 << 20
BIG = 32 << 20
CLAIM = 1 << 60
Format = Literal[0, 1, 2]
"""tarfile's USTAR_FORMAT, GNU_FORMAT, PAX_FORMAT."""


def small(key: str) -> dict[str, bytes]:
    return {"__key__": key.encode(), "question.txt": b"what?", "answer.txt": b"this"}


def header(name: str, size: int, form: Format = tarfile.GNU_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=form)


def archive_body(samples: list[dict[str, bytes]]) -> bytes:
    """The members of ``samples`` without the end-of-archive marker, for appending more after them."""
    data = tar_bytes(samples)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.getmembers()  # read to the end: the offset is then past the last member
        return data[: tar.offset]


def bomb(path: Path, zeros: int, gz: bool) -> None:
    """Samples 0000 and 0002 around 0001, whose ``blob.bin`` is ``zeros`` zero bytes; written a piece at
    a time, so that making it takes no more memory than reading it should."""
    deflate = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: gzip framing
    with open(path, "wb") as out:
        write = (lambda data: out.write(deflate.compress(data))) if gz else out.write
        write(archive_body([small("0000")]))
        write(header("0001.blob.bin", zeros))
        for _ in range(zeros >> 20):
            write(bytes(1 << 20))
        write(bytes(-zeros % 512) + tar_bytes([small("0001"), small("0002")]))
        if gz:
            out.write(deflate.flush())


@pytest.mark.parametrize("name", ["big.tar", "big.tar.gz"])
def test_member_over_the_limit_is_named_and_never_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], name: str
) -> None:
    """Before the fix the 32 MiB member was read whole (twice over for the gzip check): a bomb of a few
    KB took as much memory as it inflated to."""
    bomb(tmp_path / name, BIG, gz=name.endswith(".gz"))
    monkeypatch.setenv("MBP_MAX_MEMBER_BYTES", str(LIMIT))
    log = SkipLog()
    tracemalloc.start()
    try:
        keys = [raw.key for raw in read_samples([str(tmp_path / name)], log)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert keys == ["0000", "0002"]
    assert (log.samples_skipped, log.reasons["too large"], log.failed) == (1, 1, [])
    assert peak < BIG // 4, f"peak {peak} bytes"
    err = capfd.readouterr().err
    expected = (
        f"skipped {name}:sample 0001: member 0001.blob.bin holds {BIG} bytes, over the limit of {LIMIT}"
    )
    assert expected in err and "MBP_MAX_MEMBER_BYTES" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "form"),
    [
        ("claims.tar", tarfile.GNU_FORMAT),
        ("claims-pax.tar", tarfile.PAX_FORMAT),
        ("claims.tar.gz", tarfile.GNU_FORMAT),
    ],
)
def test_header_claiming_more_than_the_file_holds_is_damage(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], name: str, form: Format
) -> None:
    """Before the fix a 2 KB shard whose header claims 2^60 bytes raised a bare MemoryError, and the
    shards beside it were never read."""
    body, claim = archive_body([small("0000")]), header("0001.blob.bin", CLAIM, form)
    offset = len(body) + len(claim) - 512  # the member's own header, after its pax header if any
    data = body + claim + b"x" * 700
    (tmp_path / name).write_bytes(zlib.compress(data, wbits=31) if name.endswith(".gz") else data)
    write_tar(tmp_path / "good.tar", [small("g000")])
    log = SkipLog()
    keys = [raw.key for raw in read_samples([str(tmp_path / name), str(tmp_path / "good.tar")], log)]
    assert keys == ["0000", "g000"] and log.failed == [name]
    err = capfd.readouterr().err
    assert f"shard {name}: damaged after sample 0000 (offset {offset}): member 0001.blob.bin cut short" in err
    assert f"of {CLAIM} bytes)" in err


def test_a_wrong_limit_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tar(tmp_path / "good.tar", [small("g000")])
    monkeypatch.setenv("MBP_MAX_MEMBER_BYTES", "lots")
    result = invoke_mbp("shards", "inspect", str(tmp_path / "good.tar"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mbp: error: MBP_MAX_MEMBER_BYTES must be a whole number of bytes above 0, not 'lots'"
    )


MEASURE = """
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "mbp.cli", "shards", "inspect", "--json", *sys.argv[1:]],
                      capture_output=True, text=True)
sys.stderr.write(done.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)  # kilobytes on Linux
"""


def peak_rss(shard: Path, limit: int) -> tuple[int, str]:
    """Peak resident bytes of ``mbp shards inspect --json SHARD`` in a process of its own, and its stderr."""
    env = {**os.environ, "MBP_MAX_MEMBER_BYTES": str(limit)}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(shard)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout), done.stderr


def test_inspect_of_a_gzip_bomb_stays_near_its_baseline(tmp_path: Path) -> None:
    """A 256 KB ``.tar.gz`` inflating to 256 MiB: before the fix inspect's peak grew by over twice that."""
    zeros = 256 << 20
    bomb(tmp_path / "bomb.tar.gz", zeros, gz=True)
    write_tar(tmp_path / "good.tar", [small("g000")])
    baseline, _ = peak_rss(tmp_path / "good.tar", LIMIT)
    peak, err = peak_rss(tmp_path / "bomb.tar.gz", LIMIT)
    assert f"member 0001.blob.bin holds {zeros} bytes" in err
    assert peak - baseline < 64 << 20, f"baseline {baseline >> 20} MiB, bomb {peak >> 20} MiB"


def test_inspect_json_prints_its_warnings_on_stderr(tmp_path: Path) -> None:
    """Before the fix --json silenced them: the damage showed only inside the JSON document."""
    write_tar(tmp_path / "good.tar", [small("g000")])
    (tmp_path / "junk.tar").write_bytes(b"not a tar archive " * 60)
    result = invoke_mbp("shards", "inspect", str(tmp_path / "good.tar"), str(tmp_path / "junk.tar"), "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["failed_shards"] == ["junk.tar"]
    assert result.stderr.strip() == (
        "mbp: warning: shard junk.tar: damaged before its first sample (offset 0): not a tar archive"
    )


def test_a_negative_size_is_damage(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A base-256 size field can hold a negative number, which tarfile decodes as given; read as a
    size it would have meant 'read the whole rest of the file'."""
    body = archive_body([small("0000")])
    after = tar_bytes([small("0001")])
    (tmp_path / "neg.tar").write_bytes(body + header("0001.blob.bin", -CLAIM) + after)
    log = SkipLog()
    keys = [raw.key for raw in read_samples([str(tmp_path / "neg.tar")], log)]
    assert keys == ["0000"] and log.failed == ["neg.tar"]
    err = capfd.readouterr().err
    assert (
        f"shard neg.tar: damaged after sample 0000 (offset {len(body)}): "
        f"invalid header (member 0001.blob.bin claims {-CLAIM} bytes)"
    ) in err
