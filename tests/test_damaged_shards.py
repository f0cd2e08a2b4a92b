"""Issue 11: damaged tar and tar.gz shards are counted and named; the samples before the damage are used,
the damaged ones never."""

from __future__ import annotations

import gzip
import io
import random
import tarfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mbp.data.read import read_samples
from mbp.data.skips import SkipLog

from tests.shardkit import tar_bytes, write_tar

SAMPLES = 6


def samples() -> list[dict[str, bytes]]:
    """Six samples of two fields; sizes vary so that members end at different places in a block."""
    return [
        {
            "__key__": f"{i:04d}".encode(),
            "question.txt": f"question {i} ".encode() * (1 + 7 * i),
            "answer.txt": random.Random(i).randbytes(300 + 97 * i),  # incompressible: gzip offsets spread
        }
        for i in range(SAMPLES)
    ]


TAR = tar_bytes(samples())
GZ = gzip.compress(TAR, mtime=0)


def layout() -> tuple[list[int], int]:
    """The end of the header that confirms each sample complete (the next sample's first header, or the
    end-of-archive marker for the last), and where the end-of-archive marker ends."""
    with tarfile.open(fileobj=io.BytesIO(TAR)) as tar:
        members = tar.getmembers()
        archive_end = tar.offset  # after the last member; the marker is two 512-byte blocks
    firsts = [m.offset for m in members[::2]]
    confirm = [offset + 512 for offset in firsts[1:]] + [archive_end + 1024]
    return confirm, archive_end + 1024


CONFIRM, MARKER_END = layout()


def read(tmp_path: Path, data: bytes, name: str, quiet: bool = True) -> tuple[list, SkipLog]:
    path = tmp_path / name
    path.write_bytes(data)
    log = SkipLog(quiet=quiet)
    return list(read_samples([str(path)], log)), log


def expected_before(intact: int) -> list[str]:
    """Keys of the samples known complete from the first ``intact`` bytes of the tar stream."""
    return [f"{i:04d}" for i in range(SAMPLES) if CONFIRM[i] <= intact]


def assert_intact(got: list) -> None:
    originals = {s["__key__"].decode(): s for s in samples()}
    for raw in got:
        assert raw.fields == {k: v for k, v in originals[raw.key].items() if k != "__key__"}


def test_whole_shards_read_completely(tmp_path: Path) -> None:
    for name, data in (("s.tar", TAR), ("s.tar.gz", GZ)):
        got, log = read(tmp_path, data, name)
        assert [r.key for r in got] == [f"{i:04d}" for i in range(SAMPLES)]
        assert_intact(got)
        assert (log.shards_failed, log.samples_skipped) == (0, 0)
    # padding after the end-of-archive marker is not part of the archive
    got, log = read(tmp_path, TAR[:MARKER_END], "short-record.tar")
    assert len(got) == SAMPLES and log.shards_failed == 0


@pytest.mark.parametrize(
    ("case", "kept"),
    [("member boundary", 3), ("mid header", 3), ("garbage header", 3), ("no end marker", 5)],
)
def test_damaged_tar_is_named_and_keeps_the_samples_before(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], case: str, kept: int
) -> None:
    """Before the fix each of these read as a complete shard of fewer samples, with no warning."""
    with tarfile.open(fileobj=io.BytesIO(TAR)) as tar:
        members = tar.getmembers()
    boundary = members[8].offset  # first header of sample 0004
    damaged = {
        "member boundary": TAR[:boundary],
        "mid header": TAR[: boundary + 200],
        "garbage header": TAR[:boundary] + b"\x07garbage" * 64 + TAR[boundary + 512 :],
        "no end marker": TAR[: MARKER_END - 1024],
    }[case]
    path = tmp_path / "d.tar"
    path.write_bytes(damaged)
    log = SkipLog()
    got = list(read_samples([str(path)], log))
    assert [r.key for r in got] == [f"{i:04d}" for i in range(kept)]
    assert_intact(got)
    assert (log.shards_failed, log.samples_skipped, log.failed) == (1, 1, ["d.tar"])
    err = capfd.readouterr().err
    offset = boundary if case != "no end marker" else MARKER_END - 1024
    assert f"shard d.tar: damaged after sample {kept - 1:04d} (offset {offset})" in err
    assert f"skipped d.tar:sample {kept:04d}: cut short by the damage at offset {offset}" in err


def test_damaged_tar_gz_is_named(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    got, log = read(tmp_path, GZ[: len(GZ) // 2], "cut.tar.gz", quiet=False)
    inflated = len(zlib.decompressobj(wbits=31).decompress(GZ[: len(GZ) // 2]))
    assert [r.key for r in got] == expected_before(inflated) and len(got) >= 1
    assert_intact(got)
    assert log.failed == ["cut.tar.gz"]
    corrupt = bytearray(GZ)
    corrupt[len(GZ) // 2] ^= 0x55
    got, log = read(tmp_path, bytes(corrupt), "corrupt.tar.gz", quiet=False)
    assert got == [] and log.failed == ["corrupt.tar.gz"]
    # the tar inside is whole, so all its samples are used; the file is still reported as cut
    got, log = read(tmp_path, GZ[:-4], "no-trailer.tar.gz", quiet=False)
    assert len(got) == SAMPLES and log.failed == ["no-trailer.tar.gz"]
    err = capfd.readouterr().err
    assert "shard cut.tar.gz: damaged after sample 0002 (offset 7168): gzip stream cut short" in err
    assert "shard corrupt.tar.gz: damaged before its first sample (offset 0): corrupt gzip data" in err
    assert f"shard no-trailer.tar.gz: damaged after its last sample (offset {MARKER_END}): gzip stream" in err


def test_member_cut_mid_data_names_the_cut_sample_and_keeps_the_one_before(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Before the fix the complete sample 0001 was dropped and blamed; 0002 was never named."""
    with tarfile.open(fileobj=io.BytesIO(TAR)) as tar:
        first_of_2 = tar.getmembers()[4]
    path = tmp_path / "cut.tar"
    path.write_bytes(TAR[: first_of_2.offset_data + 10])
    log = SkipLog()
    got = list(read_samples([str(path)], log))
    assert [r.key for r in got] == ["0000", "0001"]
    err = capfd.readouterr().err
    assert f"shard cut.tar: damaged after sample 0001 (offset {first_of_2.offset})" in err
    assert f"member 0002.{first_of_2.name.split('.', 1)[1]} cut short (10 of {first_of_2.size} bytes)" in err
    assert "skipped cut.tar:sample 0002: cut short" in err and "sample 0001: cut" not in err


def test_missing_shard_is_named(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    log = SkipLog()
    write_tar(tmp_path / "ok.tar", samples()[:2])
    got = list(read_samples([str(tmp_path / "gone.tar"), str(tmp_path / "ok.tar")], log))
    assert [r.key for r in got] == ["0000", "0001"] and log.failed == ["gone.tar"]
    assert "shard gone.tar failed: cannot read: No such file or directory" in capfd.readouterr().err


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(cut=st.integers(min_value=0, max_value=MARKER_END - 1))
def test_property_truncated_tar(tmp_path: Path, cut: int) -> None:
    got, log = read(tmp_path, TAR[:cut], "t.tar")
    assert [r.key for r in got] == expected_before(cut)
    assert_intact(got)
    assert log.failed == ["t.tar"]


@FAST
@given(data=st.data())
def test_property_corrupt_tar(tmp_path: Path, data: st.DataObject) -> None:
    """A plain tar checks its headers and its end marker, never the file data (there is no checksum of
    it), so the damage goes into a header or the end marker; bytes 148-155 are excluded because they
    hold the checksum itself, where a space and a NUL read alike."""
    blocks = [offset - 512 for offset in CONFIRM[:-1]] + [MARKER_END - 1024, MARKER_END - 512]
    with tarfile.open(fileobj=io.BytesIO(TAR)) as tar:
        blocks += [m.offset for m in tar.getmembers()]
    block = data.draw(st.sampled_from(sorted(set(blocks))))
    within = data.draw(st.integers(0, 511).filter(lambda i: not 148 <= i < 156))
    corrupt = bytearray(TAR)
    corrupt[block + within] ^= data.draw(st.integers(1, 255))
    got, log = read(tmp_path, bytes(corrupt), "c.tar")
    assert [r.key for r in got] == expected_before(block)
    assert_intact(got)
    assert log.failed == ["c.tar"]


@FAST
@given(cut=st.integers(min_value=0, max_value=len(GZ) - 1))
def test_property_truncated_tar_gz(tmp_path: Path, cut: int) -> None:
    got, log = read(tmp_path, GZ[:cut], "t.tar.gz")
    inflated = len(zlib.decompressobj(wbits=31).decompress(GZ[:cut])) if cut >= 10 else 0
    assert [r.key for r in got] == expected_before(inflated)
    assert_intact(got)
    assert log.failed == ["t.tar.gz"]


@FAST
@given(at=st.integers(min_value=10, max_value=len(GZ) - 1), flip=st.integers(1, 255))
@example(at=3675, flip=2)  # the two cases hypothesis found, kept
@example(at=3682, flip=2)
def test_property_corrupt_tar_gz(tmp_path: Path, at: int, flip: int) -> None:
    """Past the 10-byte gzip header (its time stamp and OS byte are unchecked and harmless) a change that
    alters the data is caught by the CRC; gzip cannot say where the damage is, so no sample of the stream
    is used. A flip in the unused padding bits of deflate's last byte changes no data (hypothesis found
    byte 3682, flip 2): then every sample must come back intact, never a changed one. A flip can also
    make deflate read the rest as a stream that stops early, with no error (hypothesis found byte 3675,
    flip 2: the inflated bytes differ only in the end-of-archive zeros after the last sample): that
    reads as a cut-short shard, named, and the samples wholly before the cut come back intact."""
    corrupt = bytearray(GZ)
    corrupt[at] ^= flip
    got, log = read(tmp_path, bytes(corrupt), "c.tar.gz")
    inflater = zlib.decompressobj(wbits=31)
    inflated = inflater.decompress(bytes(corrupt)) if got else b""
    assert_intact(got)
    if got and inflater.eof:
        assert inflated == TAR  # the flip changed nothing
        assert len(got) == SAMPLES and log.failed == []
    else:
        assert log.failed == ["c.tar.gz"]
