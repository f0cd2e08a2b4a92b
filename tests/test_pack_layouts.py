"""``mbp shards pack``: a folder of class folders split into train and eval shards, CSV manifests,
field names that differ only in case, and shards that already exist."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import invoke_mbp
from tests.shardkit import png


def test_pack_refuses_fields_differing_only_in_case(tmp_path: Path) -> None:
    """The reader lower-cases suffixes, so ``0001.TXT`` and ``0001.txt`` would read as one field twice
    and the sample would be skipped: packing refuses, naming both files."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "0001.TXT").write_text("upper")
    (src / "0001.txt").write_text("lower")
    result = invoke_mbp("shards", "pack", str(src), str(tmp_path / "out-%06d.tar"))
    assert result.returncode == 1
    assert "0001.TXT" in result.stderr and "0001.txt" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out-000000.tar").exists()


def test_pack_stores_upper_case_suffixes_as_the_reader_reads_them(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "0001.PNG").write_bytes(png())
    (src / "0001.answer.TXT").write_text("red")
    result = invoke_mbp("shards", "pack", str(src), str(tmp_path / "out-%06d.tar"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(invoke_mbp("shards", "inspect", str(tmp_path / "out-000000.tar"), "--json").stdout)
    assert report["samples"] == 1 and report["samples_skipped"] == 0
    assert sorted(report["fields"]) == ["answer.txt", "png"]


def test_pack_manifest_refuses_fields_differing_only_in_case(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"Answer.txt": "a", "answer.txt": "b"}) + "\n")
    result = invoke_mbp("shards", "pack", "--manifest", str(manifest), str(tmp_path / "s-%03d.tar"))
    assert result.returncode == 1
    assert (
        "m.jsonl:1" in result.stderr and "'Answer.txt'" in result.stderr and "'answer.txt'" in result.stderr
    )


def test_pack_refuses_to_overwrite_shards_unless_forced(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i:04d}.txt").write_text(f"sample {i}")
    pattern = str(tmp_path / "out" / "s-%06d.tar")
    first = invoke_mbp("shards", "pack", str(src), pattern, "--maxcount", "1")
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "out" / "s-000000.tar").read_bytes()
    (src / "0000.txt").write_text("changed")
    again = invoke_mbp("shards", "pack", str(src), pattern, "--maxcount", "1")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"mbp: error: {tmp_path / 'out' / 's-000000.tar'} exists; pass --force to overwrite it"
    ]
    assert (tmp_path / "out" / "s-000000.tar").read_bytes() == before
    # --force rewrites; shards of the earlier pack beyond the new ones are removed, so a glob of the
    # pattern reads only the new pack
    (src / "0002.txt").unlink()
    forced = invoke_mbp("shards", "pack", str(src), pattern, "--maxcount", "1", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s-000000.tar", "s-000001.tar"]
    assert (tmp_path / "out" / "s-000000.tar").read_bytes() != before
