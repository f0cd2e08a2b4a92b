"""Issue 3: shard packing and inspection, the loader, and corrupt input skipped by name and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mbp.data.batches import batches, encoded_stream
from mbp.data.skips import SkipLog
from mbp.protocol import PAD, decode_stream
from mbp.resolve import resolve

from tests.conftest import invoke_mbp, run_mbp
from tests.shardkit import REGISTRY, corrupt_set, good_samples, png, write_tar


def registry(tmp_path: Path) -> str:
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY)
    return str(path)


# Packing and inspecting that succeed run in-process (their JSON reports are the subject);
# test_pack_errors_are_one_line runs its first refusal as the mbp process.


def test_pack_folder_groups_files_by_basename(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"{i:04d}.scene.png").write_bytes(png())
        (src / f"{i:04d}.question.txt").write_text("what colour?")
        (src / f"{i:04d}.answer.txt").write_text("red")
    result = invoke_mbp(
        "shards", "pack", str(src), str(tmp_path / "out" / "train-%06d.tar"), "--maxcount", "2", "--json"
    )
    assert result.returncode == 0, result.stderr
    packed = json.loads(result.stdout)
    assert packed["samples"] == 5 and len(packed["shards"]) == 3
    inspected = invoke_mbp(
        "shards", "inspect", *packed["shards"], "--pipeline", "qa", "--registry", registry(tmp_path), "--json"
    )
    report = json.loads(inspected.stdout)
    assert report["samples"] == 5 and [s["samples"] for s in report["shards"]] == [2, 2, 1]
    assert report["fields"]["answer.txt"] == {"count": 5, "bytes": 15}
    # BOS + scene (SEG "pixels w=4 h=4 mode=RGB" HDR 48 END) + question (SEG text HDR 12 END) + answer + EOS
    expected = 1 + (1 + 23 + 1 + 48 + 1) + (1 + 4 + 1 + 12 + 1) + (1 + 4 + 1 + 3 + 1) + 1
    assert report["tokens"] == {"min": expected, "median": expected, "max": expected}


def test_pack_manifest_with_paths_and_inline_strings(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"scene.png": "@a.png", "question.txt": "what?", "answer.txt": "red"}) + "\n"
    )
    result = invoke_mbp("shards", "pack", "--manifest", str(manifest), str(tmp_path / "s-%03d.tar"), "--json")
    shards = json.loads(result.stdout)["shards"]
    report = json.loads(invoke_mbp("shards", "inspect", *shards, "--json").stdout)
    assert (
        report["fields"]["scene.png"]["bytes"] == len(png())
        and report["fields"]["question.txt"]["bytes"] == 5
    )


def test_pack_errors_are_one_line(tmp_path: Path) -> None:
    result = run_mbp("shards", "pack", str(tmp_path / "nowhere"), str(tmp_path / "x-%d.tar"))
    assert result.returncode == 1 and result.stderr.strip().endswith("nowhere: not a folder")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    # the first refusal as the mbp process, this one through the same command in-process
    result = invoke_mbp(
        "shards", "pack", "--manifest", str(tmp_path / "bad.jsonl"), str(tmp_path / "x-%d.tar")
    )
    assert "bad.jsonl:1: invalid JSON" in result.stderr and "Traceback" not in result.stderr


def test_loader_encodes_and_batches(tmp_path: Path, components) -> None:
    write_tar(tmp_path / "s.tar", good_samples("k", 6))
    resolved = resolve(registry(tmp_path), "qa", components=components)
    log = SkipLog()
    stream = encoded_stream([str(tmp_path / "s.tar")], resolved.encoder, 256, log, repeat=False)
    batch, position = next(batches(stream, 4, 256))
    assert batch.tokens.shape == (4, 256) and position.consumed == 4
    first = batch.samples[0]
    decoded = decode_stream(batch.tokens[0].numpy())
    assert [s.codec for s in decoded.segments] == ["wav", "text", "text"]
    assert decoded.segments[2].payload == b"red"
    # vqa weights: the answer segment and EOS fully; the context by its codec's weight where it gives
    # one (the WAV read as log-mel: 0.1), else the heads' 0.01; PAD never weighted
    answer, tone, question = first.span("answer"), first.span("tone"), first.span("question")
    weights = batch.weights[0]
    assert weights[answer.start : answer.end].eq(1).all()
    assert torch.allclose(weights[tone.start : tone.end], torch.tensor(0.1))
    assert torch.allclose(weights[question.start : question.end], torch.tensor(0.01))
    assert weights[0] == pytest.approx(0.01)  # BOS belongs to no field
    assert weights[batch.tokens[0] == PAD].eq(0).all()


def test_corrupt_shards_are_skipped_named_and_counted(tmp_path: Path, capfd, components) -> None:
    shards = corrupt_set(tmp_path / "shards")
    resolved = resolve(registry(tmp_path), "qa", components=components)
    log = SkipLog()
    samples = [s for s, _ in encoded_stream(shards, resolved.encoder, 256, log, repeat=False)]
    assert sorted(s.key for s in samples) == ["g000", "g001", "g002", "t000", "t001"]
    assert (log.samples_skipped, log.shards_failed) == (4, 2)
    assert log.reasons == {"missing field": 1, "bad field": 2, "truncated": 1, "shard": 2}
    err = capfd.readouterr().err
    assert "skipped a-mixed.tar:sample nofield: missing field 'answer'" in err
    assert "skipped a-mixed.tar:sample badimage:field scene.png: not a readable image" in err
    assert "skipped a-mixed.tar:sample badwav:field tone.wav: not readable audio" in err
    assert (
        "shard b-truncated.tar: damaged after sample t001 (offset 8192): "
        "member t002.tone.wav cut short (1 of 84 bytes)" in err
    )
    assert (
        "skipped b-truncated.tar:sample t002: cut short by the damage at offset 8192 "
        "(fields read: answer.txt, question.txt)" in err
    )
    assert "shard c-notatar.tar: damaged before its first sample (offset 0): not a tar archive" in err
    assert "0x" not in err  # no object reprs in messages
    assert len(err.strip().splitlines()) == 6


def test_inspect_reports_skips_in_json(tmp_path: Path) -> None:
    shards = corrupt_set(tmp_path / "shards")
    result = invoke_mbp(
        "shards", "inspect", *shards, "--pipeline", "qa", "--registry", registry(tmp_path), "--json"
    )
    report = json.loads(result.stdout)
    assert report["samples"] == 8 and report["shards_failed"] == 2
    assert report["failed_shards"] == ["b-truncated.tar", "c-notatar.tar"]
    assert report["samples_skipped"] == 4  # 3 broken samples + the one cut short by truncation


def test_prefetch_keeps_order_stops_its_thread_and_passes_errors() -> None:
    import threading
    import time

    import pytest
    from mbp.data.batches import prefetch

    def slow(n: int):
        for i in range(n):
            time.sleep(0.01)
            yield i

    assert list(prefetch(slow(20))) == list(range(20))
    early = prefetch(slow(1000))
    assert [next(early) for _ in range(3)] == [0, 1, 2]
    early.close()  # the consumer stops early, as a finished training run does
    assert not any(t.name == "mbp-prefetch" and t.is_alive() for t in threading.enumerate())

    def broken():
        yield 1
        raise ValueError("shard went away")

    with pytest.raises(ValueError, match="shard went away"):
        list(prefetch(broken()))


def test_shuffle_pool_mixes_and_stops_growing_at_its_byte_cap(monkeypatch) -> None:
    """The default stream is shuffled (a set written class by class must not train one class at a
    time); the pool also yields early once it holds SHUFFLE_BYTES, so large documents cannot fill memory."""
    import numpy as np
    from mbp.data import batches as batches_module
    from mbp.data.read import RawSample

    items = [RawSample("s.tar", str(i), {"txt": bytes(100)}) for i in range(50)]
    out = list(batches_module._shuffled(iter(items), 1000, np.random.default_rng(0)))
    assert sorted(int(r.key) for r in out) == list(range(50))  # a permutation: nothing lost or repeated
    assert [int(r.key) for r in out] != list(range(50))
    monkeypatch.setattr(batches_module, "SHUFFLE_BYTES", 350)  # about 3 samples
    capped = list(batches_module._shuffled(iter(items), 1000, np.random.default_rng(0)))
    assert int(capped[0].key) < 4  # yielded once the pool passed 350 bytes, not after 1,000 samples
    assert sorted(int(r.key) for r in capped) == list(range(50))
