"""``mbp run`` reports its held-out shards as it reports its training shards: each damaged or missing
one in one line naming it, and a held-out set that yields no sample in one line of its own."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import invoke_mbp
from tests.shardkit import REGISTRY, good_samples, write_tar
from tests.test_shard_bounds import CLAIM, archive_body, header, small


def run(tmp_path: Path, train: list[str], held_out: list[str]) -> tuple[dict, list[str]]:
    """A 3-step run: its summary and its warning lines."""
    (tmp_path / "registry.yaml").write_text(REGISTRY)
    args = ["run", "qa", *(str(tmp_path / name) for name in train), "--steps", "3"]
    args += [arg for name in held_out for arg in ("--eval-shards", str(tmp_path / name))]
    args += ["--registry", str(tmp_path / "registry.yaml"), "--out", str(tmp_path / "out"), "--json"]
    result = invoke_mbp(*args, "--set", "train.precision=fp32")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("mbp: warning:")]
    return json.loads(result.stdout), warnings


def test_a_held_out_set_that_yields_nothing_says_so(tmp_path: Path) -> None:
    """Before the fix this run said nothing at all: no evaluation, no best checkpoint, exit 0. Beside
    it, a training shard whose header claims 2^60 bytes aborted the run with a bare MemoryError."""
    write_tar(tmp_path / "train.tar", good_samples("a", 8))
    body = archive_body([small("c000")])
    (tmp_path / "claims.tar").write_bytes(body + header("c001.blob.bin", CLAIM))
    (tmp_path / "junk.tar").write_bytes(b"not a tar archive " * 60)
    summary, warnings = run(tmp_path, ["train.tar", "claims.tar"], ["junk.tar", "gone.tar"])
    assert summary["steps"] == 3 and summary["failed_shards"] == ["claims.tar"]
    assert not (tmp_path / "out" / "checkpoints" / "best").exists()
    expected = [
        "shard junk.tar: damaged before its first sample (offset 0): not a tar archive",
        "shard gone.tar failed: cannot read: No such file or directory",
        f"no usable held-out sample in 2 shard(s) ({tmp_path / 'junk.tar'}, {tmp_path / 'gone.tar'}): "
        "2 shard; the run trains without evaluation or a best checkpoint",
        f"shard claims.tar: damaged after sample c000 (offset {len(body)}): member c001.blob.bin cut short "
        f"(0 of {CLAIM} bytes)",
    ]
    assert all(any(line.endswith(want) for line in warnings) for want in expected), warnings


def test_a_damaged_held_out_shard_beside_a_good_one_is_named(tmp_path: Path) -> None:
    """Before the fix the garbage shard was never named; the good one was evaluated alone."""
    write_tar(tmp_path / "train.tar", good_samples("a", 8))
    write_tar(tmp_path / "eval.tar", good_samples("e", 4))
    (tmp_path / "junk.tar").write_bytes(b"not a tar archive " * 60)
    summary, warnings = run(tmp_path, ["train.tar"], ["junk.tar", "eval.tar"])
    assert warnings == [
        "mbp: warning: shard junk.tar: damaged before its first sample (offset 0): not a tar archive"
    ]
    assert summary["metrics"]["loss_bpb"] > 0 and (tmp_path / "out" / "checkpoints" / "best").is_dir()


def test_eval_json_names_a_damaged_shard_on_stderr(tmp_path: Path) -> None:
    """``mbp eval --json`` keeps stdout to its JSON document and still names a damaged shard on stderr,
    as ``mbp run`` does (it printed nothing there)."""
    write_tar(tmp_path / "train.tar", good_samples("a", 8))
    write_tar(tmp_path / "eval.tar", good_samples("e", 4))
    run(tmp_path, ["train.tar"], [])
    (tmp_path / "junk.tar").write_bytes(b"not a tar archive " * 60)
    result = invoke_mbp(
        "eval",
        "qa",
        str(tmp_path / "eval.tar"),
        str(tmp_path / "junk.tar"),
        "--checkpoint",
        str(tmp_path / "out" / "checkpoints" / "step-00000003"),
        "--registry",
        str(tmp_path / "registry.yaml"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["metrics"]["loss_bpb"] > 0
    assert "mbp: warning: shard junk.tar: damaged before its first sample (offset 0): not a tar archive" in (
        result.stderr.splitlines()
    )
